"""APNs pushes: our sender against a bare h2 client, and call.start -> push on the wire.

    python -m bench --push [--quick] [--profile]     (about 75 s; quick about 20 s)

The simulator runs in a process of its own (`bench/apns_sim.py`: `python -m apnsim`'s
simulator plus a pipe to read its records), pinned to the load CPU; nothing else under test
shares its core.

1. Throughput: `APNsNotifier.send` against a bare h2 client (the `h2` state machine on an
   asyncio TLS connection, written here): same requests, same provider JWT, same number of
   sends in flight, one warm connection each, interleaved rounds. Besides pushes/s it shows
   each client's CPU per push and how busy the simulator's core was, which says which side
   is the ceiling.
2. Latency: a real node (separate process, APNS_* settings pointing at the simulator), a
   callee device registered with a VoIP token (not connected: a phone asleep), calls started
   over WebSocket at a steady rate; from just before `call.start` is sent (time.time()) to
   the simulator's `received_at` for the invite (time.time() in its process, same machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)

from apnsim import client_ssl_context
from bench import devices
from bench.apns_sim import runq_seconds
from bench.noise import Noise
from bench.procs import ROOT, Cluster, NodeProcess, cpu_plan, wait_or_kill
from bench.profile import Spy, spy_on
from bench.rounds import Plan as BasePlan
from bench.rounds import Round as BaseRound
from bench.rounds import Send, closed_loop, interleaved
from bench.setup_latency import _paced
from bench.stats import median, percentile, ratio
from voip.auth import Authenticator
from voip.push import APNsConfig, APNsNotifier, Caller, Environment, PushRequest, voip_invite
from voip.push.apns_connection import lean_h2

T = TypeVar("T")

BUNDLE = "com.example.caller"  # APNS_BUNDLE_ID's default
RING_TIMEOUT_MS = 600_000  # bench/server.py's ring_timeout
POOL = 4096  # distinct requests cycled through in part 1
TOKENS = 64
PAIRS = 10  # callers and callees in part 2, so no socket meets ws_rate
DRAIN_TIMEOUT = 10.0
TARGET_P50_MS = 5.0


@dataclass(frozen=True)
class Plan(BasePlan):
    rates: tuple[tuple[float, int], ...]  # (calls per second, calls)


FULL = Plan(rounds=5, seconds=1.2, warmup=0.5, concurrency=(1, 100), rates=((20, 200), (100, 1000)))
QUICK = Plan(rounds=1, seconds=0.7, warmup=0.2, concurrency=(1, 100), rates=((20, 30), (100, 100)))


# the simulator process


class SimProcess:
    def __init__(self, cpu: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-apns-"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.apns_sim", "--cpu", str(cpu), "--dir", str(self.dir)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the APNs simulator did not start")
        self.info: dict[str, str] = orjson.loads(line)

    def ask(self, command: str) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return orjson.loads(self.process.stdout.readline())

    def settings(self) -> dict[str, str]:
        """The node's APNS_* environment for this simulator."""
        return {
            "APNS_KEY_FILE": self.info["key_file"],
            "APNS_KEY_ID": self.info["key_id"],
            "APNS_TEAM_ID": self.info["team_id"],
            "APNS_BUNDLE_ID": BUNDLE,
            "APNS_ENDPOINT": self.info["endpoint"],
            "APNS_CA_FILE": self.info["ca_file"],
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # EOF: GOAWAY and exit
            wait_or_kill(self.process)


# part 1: the bare client


class BareH2(asyncio.Protocol):
    """The least an HTTP/2 client can do: h2's state machine, a future per stream. `lean`:
    h2 driven as our connections drive it (`lean_h2`), else with h2's defaults."""

    def __init__(self, lean: bool = False) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        if lean:
            lean_h2(self.h2)
        self.transport: Any = None  # uvloop's SSL transport is not an asyncio.Transport
        self.streams: dict[int, tuple[asyncio.Future[int], list[int]]] = {}
        self.changed = asyncio.Event()  # settings or window changed: blocked senders look again
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, host: str, port: int, ca_file: str, *, lean: bool = False) -> BareH2:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(lean), host, port, ssl=client_ssl_context(ca_file), server_hostname=host
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, ResponseReceived):
                entry = self.streams.get(event.stream_id or 0)
                if entry is not None:
                    entry[1].append(int(dict(event.headers or [])[b":status"]))
            elif isinstance(event, DataReceived):
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id or 0)
            elif isinstance(event, StreamEnded):
                entry = self.streams.pop(event.stream_id or 0, None)
                if entry is not None:
                    entry[0].set_result(entry[1][0] if entry[1] else 0)
                    self.changed.set()
            elif isinstance(event, StreamReset):
                entry = self.streams.pop(event.stream_id or 0, None)
                if entry is not None:
                    entry[0].set_exception(ConnectionError(f"stream reset {event.error_code}"))
                    self.changed.set()
            elif isinstance(event, (RemoteSettingsChanged, WindowUpdated)):
                self.changed.set()
            elif isinstance(event, ConnectionTerminated):
                self.connection_lost(ConnectionError("GOAWAY"))
        data_out = self.h2.data_to_send()
        if data_out and self.transport is not None:
            self.transport.write(data_out)

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self.streams = self.streams, {}
        for future, _ in streams.values():
            if not future.done():
                future.set_exception(ConnectionError(str(exc)))

    async def send(self, headers: Sequence[tuple[str, str] | tuple[bytes, bytes]], body: bytes) -> int:
        """One request; its :status."""
        while (
            len(self.streams) >= self.h2.remote_settings.max_concurrent_streams
            or len(body) > self.h2.outbound_flow_control_window
        ):
            self.changed.clear()
            await self.changed.wait()
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, body, end_stream=True)
        future: asyncio.Future[int] = self.loop.create_future()
        self.streams[stream_id] = (future, [])
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())
        return await future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# part 1: the measurement

# The baseline first: a bare client with h2's defaults; then one driving h2 as ours does
# (`lean_h2`), which tells h2's share from the sender's own.
CLIENTS = ("bare h2", "bare h2, lean", "APNsNotifier.send")


@dataclass(frozen=True)
class Round(BaseRound):
    client_runq_s: float  # runnable but waiting for a CPU
    sim_runq_s: float


def _requests(auth: Authenticator) -> list[PushRequest]:
    """Invites shaped as the node builds them (status_url with a real capability)."""
    tokens = [secrets.token_hex(32) for _ in range(TOKENS)]
    deadline = time.time() + 3600
    out = []
    for n in range(POOL):
        call_id = str(uuid.uuid4())
        cap = auth.capability(call_id, "bob-phone", int(deadline) + 86400)
        out.append(
            voip_invite(
                bundle_id=BUNDLE,
                device_token=tokens[n % TOKENS],
                environment=Environment.SANDBOX,
                call_id=call_id,
                caller=Caller(id="alice", display_name="Alice A."),
                ring_deadline=deadline,
                status_url=f"http://127.0.0.1:8080/v1/calls/{call_id}/status?device_id=bob-phone&cap={cap}",
            )
        )
    return out


async def throughput(sim: SimProcess, plan: Plan) -> list[Round]:
    info = sim.info
    host, port = info["endpoint"].rsplit(":", 1)
    notifier = APNsNotifier(
        APNsConfig(
            bundle_id=BUNDLE,
            key_file=info["key_file"],
            key_id=info["key_id"],
            team_id=info["team_id"],
            endpoint=info["endpoint"],
            ca_file=info["ca_file"],
        )
    )
    pool = _requests(Authenticator(secrets.token_urlsafe(32)))
    assert notifier.tokens is not None
    authorization = notifier.tokens.header()  # the same JWT for both clients
    sender = notifier.sender(Environment.SANDBOX)
    # The same requests: as any client would write them (plain tuples, h2's defaults), and
    # as our sender shapes them for a lean h2 connection.
    bare_requests = [
        ([*((k.decode(), v.decode()) for k, v in sender.headers(r)), ("authorization", authorization)], r.payload)
        for r in pool
    ]
    lean_requests = [([*sender.headers(r), (b"authorization", authorization.encode())], r.payload) for r in pool]
    bare = await BareH2.connect(host, int(port), info["ca_file"])
    lean = await BareH2.connect(host, int(port), info["ca_file"], lean=True)
    await notifier.connect(Environment.SANDBOX)

    async def ours(i: int) -> bool:
        return (await notifier.send(pool[i % POOL])).status == 200

    def bare_client(client: BareH2, requests: list[Any]) -> Callable[[int], Awaitable[bool]]:
        async def theirs(i: int) -> bool:
            headers, body = requests[i % POOL]
            try:
                return await client.send(headers, body) == 200
            except ConnectionError:
                return False

        return theirs

    clients = {
        "APNsNotifier.send": ours,
        "bare h2": bare_client(bare, bare_requests),
        "bare h2, lean": bare_client(lean, lean_requests),
    }
    for send in clients.values():  # authenticate every connection: the stream limit goes 1 -> 1000
        if not await send(0):
            raise RuntimeError(f"the simulator refused the first push: {sim.ask('receipts')[:1]}")

    async def measured(name: str, send: Send, concurrency: int) -> Round:
        sim.ask("clear")
        before, runq = sim.ask("stats"), runq_seconds()
        loop = await closed_loop(send, concurrency, plan.seconds)
        after = sim.ask("stats")
        return Round(
            name,
            concurrency,
            loop.ok,
            loop.failed,
            loop.seconds,
            loop.cpu_s,
            after["cpu_s"] - before["cpu_s"],
            runq_seconds() - runq,
            after["runq_s"] - before["runq_s"],
        )

    try:
        rounds = await interleaved(clients, plan, measured)
        connections = sim.ask("stats")["connections"]
        if connections != len(clients):
            print(f"# note: the simulator saw {connections} connections (one per client expected)")
    finally:
        bare.close()
        lean.close()
        await notifier.aclose()
        sim.ask("clear")
    return rounds


def summary(rounds: list[Round], client: str, concurrency: int) -> tuple[Round, float]:
    """A client's median round by pushes/s, and its median CPU per push (us) over the rounds."""
    mine = [r for r in rounds if r.client == client and r.concurrency == concurrency]
    return sorted(mine, key=lambda r: r.rate)[len(mine) // 2], median([r.cpu_us_per_send for r in mine])


def throughput_report(rounds: list[Round], plan: Plan) -> list[str]:
    lines = [
        f"## APNs push throughput, closed loop, one warm connection each "
        f"({plan.seconds:g}s x {plan.rounds} interleaved rounds, median)",
        f"{'client':<19}{'in flight':>10}{'pushes/s':>9}{'ratio':>7}{'client CPU':>11}{'CPU x':>7}"
        f"{'sim CPU':>9}{'client':>8}{'sim':>6}{'client':>8}{'sim':>6}{'failed':>7}   rounds pushes/s",
        f"{'':<19}{'':>10}{'':>9}{'':>7}{'us/push':>11}{'':>7}{'us/push':>9}{'core':>8}{'core':>6}"
        f"{'runq':>8}{'runq':>6}",
    ]
    ceilings: list[str] = []
    for concurrency in plan.concurrency:
        baseline: Round | None = None
        for name in CLIENTS:
            mine = [r for r in rounds if r.client == name and r.concurrency == concurrency]
            mid, cpu = summary(rounds, name, concurrency)
            sim_cpu = median([r.sim_us_per_send for r in mine])
            if baseline is None:
                baseline = mid
                base_cpu = cpu
            lines.append(
                f"{name:<19}{concurrency:>10}{mid.rate:>9.0f}{ratio(mid.rate, baseline.rate):>7.2f}"
                f"{cpu:>11.0f}{ratio(cpu, base_cpu):>7.2f}{sim_cpu:>9.0f}"
                f"{mid.cpu_s / mid.seconds:>8.0%}{mid.sim_cpu_s / mid.seconds:>6.0%}"
                f"{mid.client_runq_s / mid.seconds:>8.0%}{mid.sim_runq_s / mid.seconds:>6.0%}"
                f"{sum(r.failed for r in mine):>7}   " + " ".join(f"{r.rate:.0f}" for r in mine)
            )
            if concurrency == max(plan.concurrency):
                side = "the simulator" if sim_cpu > cpu else "the client"
                ceilings.append(
                    f"{name}: one full core each would allow {1e6 / cpu:.0f}/s client-side, "
                    f"{1e6 / sim_cpu:.0f}/s simulator-side: the ceiling is {side}"
                )
    return [
        *lines,
        "(CPU columns: median CPU per push over the rounds, client process and simulator process;",
        " core: share of the round each process ran; runq: share it was runnable but waiting for a CPU)",
        *ceilings,
    ]


# part 2: call.start -> invite on the wire


@dataclass(frozen=True)
class CallRun:
    name: str
    rate: float
    sent: int
    wire_ms: list[float]  # call.start sent -> simulator received the invite
    started_ms: list[float]  # call.start sent -> call.started read by the caller
    to_created_ms: list[float]  # call.start sent -> the call's created_at (ms resolution)
    created_to_wire_ms: list[float]  # created_at -> simulator received (ms resolution)
    not_ok: int  # invites the simulator did not answer 200
    node_cpu_ms: float  # the node's CPU per call, over the run and its drain
    node_busy: float  # share of the run the node ran
    node_runq: float  # share of the run the node was runnable but waiting for a CPU


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _register(base_url: str, auth: Authenticator, user: str, device: str, voip: bool) -> None:
    body: dict[str, Any] = {"apns_environment": "sandbox"}
    if voip:
        body["voip_token"] = secrets.token_hex(32)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.put(
            f"/v1/devices/{device}", json=body, headers={"Authorization": f"Bearer {auth.mint(user, 'device')}"}
        )
        response.raise_for_status()


async def _read(socket: Any, on_frame: Callable[[dict[str, Any], float], None]) -> None:
    with contextlib.suppress(Exception):
        async for message in socket:
            on_frame(orjson.loads(message), time.time())


async def call_to_wire(
    sim: SimProcess, cluster: Cluster, node: NodeProcess, plan: Plan, profile: list[str] | None = None
) -> list[CallRun]:
    """Per rate: calls to callees with a VoIP token, then the same to callees without one
    (the baseline: the same call, no push)."""
    auth = cluster.auth
    tag = secrets.token_hex(3)
    for p in range(PAIRS):  # registered, never connected: phones asleep
        await _register(node.base_url, auth, f"pv{tag}-{p}", "phone", voip=True)
        await _register(node.base_url, auth, f"pn{tag}-{p}", "phone", voip=False)
    callers = [await devices.connect(node.ws_url, auth, f"pc{tag}-{p}", "phone") for p in range(PAIRS)]
    sent_at: dict[str, float] = {}
    started: dict[str, float] = {}
    errors: list[dict[str, Any]] = []

    def on_caller(frame: dict[str, Any], at: float) -> None:
        if frame["type"] == "call.started":
            started[frame["call_id"]] = at
        elif frame["type"] == "error":
            errors.append(frame)

    readers = [asyncio.create_task(_read(s, on_caller)) for s in callers]

    async def run(name: str, callee: str, rate: float, count: int) -> CallRun:
        ids: list[str] = []
        push = callee == "pv"

        async def send(i: int) -> None:
            call_id = str(uuid.uuid4())
            ids.append(call_id)
            frame = orjson.dumps(
                {"type": "call.start", "id": i, "callee": f"{callee}{tag}-{i % PAIRS}", "call_id": call_id}
            ).decode()
            sent_at[call_id] = time.time()
            await callers[i % PAIRS].send(frame)

        sim.ask("clear")
        cpu, runq, began = _cpu_of(node.process.pid), runq_seconds(str(node.process.pid)), time.monotonic()
        await _paced(rate, count, send)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            receipts = {row[0]: row for row in sim.ask("receipts") if row[2] is not None} if push else {}
            if (
                errors
                or time.monotonic() > deadline
                or (all(c in started for c in ids) and (not push or all(c in receipts for c in ids)))
            ):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the pushes' timeline writes, into the node's CPU figure
        node_cpu = _cpu_of(node.process.pid) - cpu
        node_runq = runq_seconds(str(node.process.pid)) - runq
        wall = time.monotonic() - began
        if errors:
            raise RuntimeError(f"{len(errors)} error frames, first {errors[0]}")
        wire, to_created, created_to_wire, starts = [], [], [], []
        not_ok = 0
        for call_id in ids:
            if call_id in started:
                starts.append((started[call_id] - sent_at[call_id]) * 1000)
            row = receipts.get(call_id)
            if row is None:
                continue
            _, received_at, status, _sent_ms, expires_ms = row
            not_ok += status != 200
            wire.append((received_at - sent_at[call_id]) * 1000)
            created_ms = expires_ms - RING_TIMEOUT_MS
            to_created.append(created_ms - sent_at[call_id] * 1000)
            created_to_wire.append(received_at * 1000 - created_ms)
        return CallRun(
            name,
            rate,
            count,
            wire,
            starts,
            to_created,
            created_to_wire,
            not_ok,
            node_cpu / count * 1000,
            node_cpu / wall,
            node_runq / wall,
        )

    results = []
    try:
        await run("warm-up", "pv", 20, 2 * PAIRS)  # the node's first push dials and authenticates
        for rate, count in plan.rates:
            spy = spy_on(node.process.pid, count / rate) if profile is not None and rate == plan.rates[-1][0] else None
            results.append(await run("with VoIP push", "pv", rate, count))
            if spy is not None and profile is not None:
                profile += _spied(spy)
            results.append(await run("no VoIP token", "pn", rate, count))
    finally:
        for socket in callers:
            await socket.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return results


def _spied(spy: Spy) -> list[str]:
    lines = spy.collect(focus="CallPushes._send")
    return [line.replace("of the node", "of the node, calls with a VoIP push") for line in lines]


def latency_report(runs: list[CallRun]) -> list[str]:
    def p(samples: list[float], q: float) -> float:
        return percentile(samples, q) if samples else float("nan")

    lines = [
        "## call.start sent -> VoIP invite received by the simulator (open loop, ms, warm connection)",
        f"{'measure':<36}{'rate/s':>7}{'n':>6}{'lost':>5}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"
        f"{'node CPU':>10}{'node':>6}{'node':>6}",
        f"{'':<36}{'':>7}{'':>6}{'':>5}{'':>8}{'':>8}{'':>8}{'':>8}{'ms/call':>10}{'core':>6}{'runq':>6}",
    ]

    def line(label: str, run: CallRun, samples: list[float], cpu: bool) -> str:
        return (
            f"{label:<36}{run.rate:>7.0f}{run.sent:>6}{run.sent - len(samples):>5}"
            f"{p(samples, 50):>8.2f}{p(samples, 90):>8.2f}{p(samples, 99):>8.2f}"
            f"{max(samples, default=float('nan')):>8.2f}"
            + (f"{run.node_cpu_ms:>10.2f}{run.node_busy:>6.0%}{run.node_runq:>6.0%}" if cpu else "")
        )

    for run in runs:
        if run.name == "with VoIP push":
            lines.append(line("invite on the wire", run, run.wire_ms, True))
            lines.append(line("  call.started at the caller", run, run.started_ms, False))
            lines.append(
                f"  split, p50 (1 ms resolution): start->created {p(run.to_created_ms, 50):.1f}, "
                f"created->wire {p(run.created_to_wire_ms, 50):.1f}; non-200 answers: {run.not_ok}"
            )
        else:
            lines.append(line("call.started, callee without a token", run, run.started_ms, True))
    for run in runs:
        if run.name == "with VoIP push":
            met = "met" if p(run.wire_ms, 50) < TARGET_P50_MS else "MISSED"
            lines.append(
                f"target: invite on the wire p50 < {TARGET_P50_MS:g} ms at {run.rate:.0f}/s: "
                f"{met} ({p(run.wire_ms, 50):.2f} ms)"
            )
    return lines


# entry point


def _run(coro: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await coro

    try:
        import uvloop  # the nodes run on uvloop too
    except ImportError:
        return asyncio.run(wrap())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrap())


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Cluster.start_node hands the bench's environment to the node: set APNS_* for it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(quick: bool = False, profile: bool = False) -> None:
    plan = QUICK if quick else FULL
    server_cpu, load_cpu = cpu_plan()
    began, noise = time.monotonic(), Noise()
    print(
        f"# push bench: simulator (python -m bench.apns_sim) on CPU {load_cpu}; "
        f"part 1 client and part 2 node on CPU {server_cpu}; Redis and WebSocket clients on CPU {load_cpu}",
        flush=True,
    )
    sim = SimProcess(load_cpu)
    try:
        if server_cpu >= 0:
            os.sched_setaffinity(0, {server_cpu})  # part 1: the clients have their own core
        rounds = _run(throughput(sim, plan))
        print("\n".join(throughput_report(rounds, plan)), flush=True)
        if load_cpu >= 0:
            os.sched_setaffinity(0, {load_cpu})  # part 2: the node gets the other core
        with Cluster(server_cpu) as cluster:
            with _environment(sim.settings()):
                node = cluster.start_node("push")
            spied: list[str] | None = [] if profile else None
            runs = _run(call_to_wire(sim, cluster, node, plan, spied))
        print("\n".join(latency_report(runs) + (spied or [])))
    finally:
        sim.stop()
    print(noise.report())
    print(f"# done in {time.monotonic() - began:.0f}s")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:], profile="--profile" in sys.argv[1:])
