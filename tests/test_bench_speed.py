"""`python -m bench --speed` (bench/speed.py): issue 12's table. The rows not wired yet say
so instead of printing a number, and the push row runs, tiny, so that it does not rot
(the status row needs wrk, which the test environment does not install)."""

from __future__ import annotations

import os

from bench import speed

TINY = speed.Plan(
    push_rounds=1, push_seconds=0.2, push_warmup=0.1, status_rounds=1, status_seconds=1, status_warmup=0.5
)


async def test_every_row_of_the_issue_is_in_the_table_and_placeholders_measure_nothing() -> None:
    placeholders = (speed.measure_sip_call, speed.measure_app_call, speed.measure_idle_sockets)
    rows = [row for row in speed.ROWS if row.measure in placeholders]
    measured = await speed.run(TINY, tuple(rows))
    assert [m for _, m in measured] == [speed.NOT_MEASURED] * 3

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
