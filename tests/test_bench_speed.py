"""`python -m bench --speed` (bench/speed.py): issue 12's table. The push row runs, tiny, so
that it does not rot (the status row needs wrk, which the test environment does not
install); the SIP, app-to-app and idle-socket rows are judged from what their benches
return (sipp, a node process and 10,000 sockets are the bench's to run, not the suite's)."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import socket

import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from bench import app_calls, server, sip, sockets, speed

TINY = speed.Plan(
    push_rounds=1, push_seconds=0.2, push_warmup=0.1, status_rounds=1, status_seconds=1, status_warmup=0.5
)


def test_every_row_of_the_issue_is_in_the_table_each_with_its_measurement() -> None:
    assert [row.measure for row in speed.ROWS] == [
        speed.measure_sip_call,
        speed.measure_app_call,
        speed.measure_idle_sockets,
        speed.measure_push,
        speed.measure_status,
    ]
    assert (speed.QUICK.sockets, speed.FULL.sockets) == (2_000, 10_000)

    lines = speed.table([(row, speed.NOT_MEASURED) for row in speed.ROWS])
    assert lines[1] == "| work | today | goal | measured |"
    assert [line.split(" | ")[1:3] for line in lines[3:]] == [
        ["~13 ms", "<= 4 ms (>= 250 calls/s per core), no failed call"],
        ["3.6 ms", "<= 2 ms"],
        ["35.6 KiB", "<= 24 KiB, 10,000 in a storm"],
        ["1.0 x bare h2 client", ">= 0.9 x"],
        ["0.42-0.63 x bare", ">= 0.6 x bare of the same app, unpinned"],
    ]
    assert all(line.endswith("| not measured in this run |") for line in lines[3:])


async def test_the_push_row_compares_the_sender_with_the_bare_client_in_one_run() -> None:
    affinity = os.sched_getaffinity(0)
    try:
        measured = await speed.measure_push(TINY)
    finally:
        os.sched_setaffinity(0, affinity)  # the row pins this process to the client's CPU
    assert measured.met is not None
    assert " x bare h2 by CPU per push (" in measured.value and measured.value.endswith(" x by pushes/s")
    report = "\n".join(measured.lines)
    for client in ("bare h2 ", "bare h2, lean ", "APNsNotifier.send "):
        assert f"\n{client}" in report


def _rate(rate: float, *, node_ms: float, uas_ms: float, failed: int = 0, late: bool = False) -> sip.RateRow:
    calls = int(rate * sip.SECONDS)
    wall = calls / rate + (sip.PACE_SLACK * 2 if late else 0.2)
    node = sip.SippRun("node", rate, calls, calls - failed, failed, wall, 3.0)
    base = sip.SippRun("uas", rate, calls, calls, 0, calls / rate, 0.1)
    return sip.RateRow(node, base, calls, 1.0, node_ms, 0.5, 0.1, uas_ms, calls - failed, calls - failed)


def test_the_sip_row_judges_only_the_rates_sustained_with_no_failed_call_against_the_uas_of_the_same_run() -> None:
    rows = [
        _rate(50, node_ms=5.0, uas_ms=0.5),
        _rate(100, node_ms=3.0, uas_ms=0.3),
        _rate(150, node_ms=2.0, uas_ms=0.2, late=True),  # sipp's calls ended, but the node fell behind
        _rate(200, node_ms=1.0, uas_ms=0.2, failed=3),
    ]
    measured = speed.sip_verdict(rows)
    assert measured.value == "4.00 ms/call (10 x sipp UAS's 0.400 ms), 100 calls/s with no failed call"
    assert measured.met is False  # 100 calls/s is short of the goal's 250

    fast = [_rate(rate, node_ms=3.5, uas_ms=0.35) for rate in (100, 250)]
    assert speed.sip_verdict(fast).met is True
    assert speed.sip_verdict([_rate(250, node_ms=4.5, uas_ms=0.35)]).met is False  # the rate, not the CPU

    none = speed.sip_verdict([_rate(50, node_ms=1.0, uas_ms=0.1, failed=1)])
    assert none.met is False and none.value == "no rate sustained (ladder 50)"
    assert math.isnan(sip.Verdict.of([]).node_median)


async def test_the_echo_baseline_sends_as_many_frames_as_a_call_spread_over_the_frames_it_takes() -> None:
    exchange = app_calls.Exchange(frames_in=3.0, frames_out=7.0, bytes_per_frame=150)
    assert exchange.replies() == [3, 2, 2]
    assert app_calls.Exchange(3.0, 2.0, 10).replies() == [1, 1, 0]

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    app = Starlette(routes=[WebSocketRoute(server.ECHO_PATH, server.echo)])
    echo = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", log_config=None, lifespan="off"))
    serving = asyncio.create_task(echo.serve(sockets=[listener]))
    try:
        while not echo.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}{server.ECHO_PATH}"
        async with websockets.connect(url) as client:
            await client.send("3 hello")
            assert [await client.recv() for _ in range(3)] == ["hello"] * 3
            await client.send("0 nothing back")
            await client.send("1 x")
            assert await client.recv() == "x"
    finally:
        echo.should_exit = True
        await serving


def test_the_app_call_row_is_the_median_call_against_the_median_echo_of_the_same_run() -> None:
    windows = [
        app_calls.Window("call", units=100, seconds=1.0, cpu_s=0.25),  # 2.5 ms a call
        app_calls.Window("echo", units=1000, seconds=1.0, cpu_s=0.2),  # 0.2 ms an exchange
        app_calls.Window("call", units=100, seconds=1.0, cpu_s=0.15),
        app_calls.Window("echo", units=1000, seconds=1.0, cpu_s=0.2),
        app_calls.Window("call", units=100, seconds=1.0, cpu_s=0.18),
        app_calls.Window("echo", units=1000, seconds=1.0, cpu_s=0.3),
    ]
    result = app_calls.Result(windows, app_calls.Exchange(3.0, 7.0, 150), idle_ms_per_s=5.0)
    measured = speed.app_call_verdict(result)
    assert measured.value == "1.80 ms/call (9.0 x a bare echo of its frames)"
    assert measured.met is True
    assert "| 1 | call | 100 | 100 | 2.500 |" in measured.lines
    slow = app_calls.Result(windows[:2], result.exchange, 5.0)
    assert speed.app_call_verdict(slow).met is False


def _storm(connected: int, errors: dict[str, int], kib: float) -> sockets.Storm:
    before = 80_000
    return sockets.Storm(2000, connected, errors, 10.0, before, before + round(kib * connected))


def test_the_socket_row_needs_every_socket_of_the_storm_connected_and_the_memory_under_the_goal() -> None:
    assert speed.idle_sockets_verdict(_storm(2000, {}, 21.5)).met is True
    assert speed.idle_sockets_verdict(_storm(2000, {}, 30.0)).met is False
    refused = speed.idle_sockets_verdict(_storm(1990, {"closed 1013 try again later": 10}, 21.5))
    assert refused.met is False
    assert refused.value == "21.5 KiB at 1,990 sockets, 10 errors in the storm"
    assert "errors: closed 1013 try again later 10" in refused.lines[0]


def test_the_socket_bench_raises_its_open_files_limit_only_up_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert sockets.raise_open_files(soft - 1) == soft  # never lowered
        wanted = soft + 10 if hard == resource.RLIM_INFINITY else hard + 10
        assert sockets.raise_open_files(wanted) == (wanted if hard == resource.RLIM_INFINITY else hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= min(wanted, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_app_call_pair_reads_each_checkout_against_the_first_round_by_round() -> None:
    lines = app_calls.pair_lines({"this": [1.0, 2.0, 1.0], "main": [1.5, 3.2, 2.0]})
    assert lines == [
        "this: median 1.000 ms per call (1.000-2.000); x this: median 1.00 (1.00-1.00)",
        "main: median 2.000 ms per call (1.500-3.200); x this: median 1.60 (1.50-2.00)",
    ]
