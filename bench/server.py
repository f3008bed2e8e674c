"""One bench node in its own process: the real app, plus a bare route and a bare WebSocket
echo as baselines.

    python -m bench.server --cpu 1      (settings from BENCH_* environment variables)

Prints `PORT <n>` on stdout once it listens, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voip import api, heap, logs
from voip.app import create_app
from voip.http_limits import server_options
from voip.settings import load_settings
from voip.ws_protocol import LeanWebSocketProtocol

BARE_PATH = "/bench/bare"
ECHO_PATH = "/bench/echo"


async def bare(request: Request) -> Response:
    # Same response class as the status endpoint, so the baseline differs only by the work.
    return api.JSONResponse({"status": "ok", "server_time": 0})


async def echo(websocket: WebSocket) -> None:
    """A text frame `<k> <payload>` comes back as k frames of the payload: the baseline of
    bench/app_calls.py, the same frames in and out as a call, with no call behind them."""
    await websocket.accept()
    try:
        while True:
            count, _, payload = (await websocket.receive_text()).partition(" ")
            for _ in range(int(count)):
                await websocket.send_text(payload)
    except WebSocketDisconnect:
        return


HEAP_PATH = "/bench/heap"


def heap_route() -> Route:
    """BENCH_TRACEMALLOC=<frames>: `GET /bench/heap?group=lineno|traceback` answers what was
    allocated since the last call (tracemalloc snapshot diff, the top 40), for bench/sockets.py
    --profile: what a node keeps per socket."""
    import tracemalloc

    tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    last = [tracemalloc.take_snapshot()]

    async def diff(request: Request) -> Response:
        group = request.query_params.get("group", "lineno")
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = snapshot.compare_to(last[0], "traceback" if group == "traceback" else "lineno")
        last[0] = snapshot
        lines = []
        for stat in stats[:40]:
            where = "\n    ".join(stat.traceback.format()[-12:]) if group == "traceback" else str(stat.traceback[0])
            lines.append(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:8d} blocks  {where}")
        return Response("\n".join(lines) + "\n", media_type="text/plain")

    return Route(HEAP_PATH, diff, methods=["GET"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", type=int, default=-1, help="pin to this CPU (-1: no pinning)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    # Every socket is a descriptor: as many as the hard limit allows (bench/sockets.py).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    settings = load_settings(
        # Empty with REDIS_SENTINELS in the environment (the chaos run, bench/chaos.py).
        redis_url=os.environ.get("BENCH_REDIS_URL", ""),
        redis_prefix=os.environ["BENCH_PREFIX"],
        jwt_secret=os.environ["BENCH_SECRET"],
        node_id=os.environ["BENCH_NODE_ID"],
        # Bench calls ring unanswered; no ring timeout may fire in the middle of a run.
        ring_timeout=float(os.environ.get("BENCH_RING_TIMEOUT", "600")),
        # A load test rings each callee thousands of times: far past a callee's limits,
        # which are what an attack meets (docs/operators.md#limits), not what is measured.
        max_ringing_per_callee=1000,
        calls_per_callee_per_minute=100000,
        # BENCH_OPS_FEED=0/1 (bench/ops.py compares the two); unset: the settings' own default.
        **({"ops_feed": os.environ["BENCH_OPS_FEED"] != "0"} if "BENCH_OPS_FEED" in os.environ else {}),
    )
    logs.configure(settings.log_level)  # as `python -m voip run` does
    if os.environ.get("BENCH_STATUS_PIPE") == "0":  # bench/status.py: redis-py's client, to compare
        from voip.redis_conn import RedisConnections

        RedisConnections.status_pipe = lambda self: None  # type: ignore[method-assign,assignment,return-value]
    app = create_app(settings)
    app.router.routes.append(Route(BARE_PATH, bare, methods=["GET"]))
    app.router.routes.append(WebSocketRoute(ECHO_PATH, echo))
    if os.environ.get("BENCH_TRACEMALLOC"):
        app.router.routes.append(heap_route())
    if os.environ.get("BENCH_COUNT_ROUND_TRIPS") == "1":  # bench/scale.py
        from bench.redis_count import RoundTrips, install

        app.router.routes.append(install(RoundTrips()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    # The same uvicorn options as `python -m voip run` (uvloop and httptools when installed).
    config = uvicorn.Config(
        app,
        ws=LeanWebSocketProtocol,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        log_config=None,
        access_log=False,
        lifespan="on",
        **server_options(settings),
    )
    heap.settle()  # as `python -m voip run` does
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
