"""`python -m bench --chaos [--seconds 180] [--seed 1]`: three node processes on a
Sentinel-managed Redis, simulated phones calling, answering, declining and hanging up
without pause, while the harness kills a node (SIGKILL), drains another (SIGTERM) and
restarts both, fails Redis over, and makes APNs answer 429, 500, GOAWAY or nothing.
Then it checks what must hold whatever happened, and prints one count per invariant
(docs/benchmarks.md#chaos-run).

The phones reach the nodes through a TCP balancer in this process, as apps reach a
fleet behind a load balancer; it is also the `status_url` every push carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import orjson
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apnsim import APNsSimulator, Fault
from bench.procs import ROOT, NodeProcess
from tests.sentinel import SentinelRedis
from voip.auth import Authenticator
from voip.calls import CallState
from voip.devicesim import Backend, CallRefused, EventLog, Phone, Policy
from voip.devicesim.phone import ENDING_FRAMES
from voip.push.payloads import CANCELLED, INCOMING
from voip.redis_conn import RedisConnections
from voip.settings import load_settings
from voip.stores import Stores

BUNDLE = "com.example.caller"
LATE_MS = 5000  # a call may ring this long past its deadline, no more
# A call the caller was told about may be lost only if it was created this close before
# the master died: writes not yet replicated (docs/deploy.md#what-a-failover-can-lose).
LOSS_WINDOW_S = 1.0
APNS_FAULTS: tuple[tuple[str, Callable[[], Fault]], ...] = (
    ("429", Fault.too_many_requests),
    ("500", Fault.internal_server_error),
    ("goaway", Fault.goaway),
    ("silence", Fault.silent),
)


@dataclass(frozen=True)
class Plan:
    seconds: float = 180.0
    seed: int = 1
    ring_timeout: float = 5.0
    callers: int = 4
    # A Sentinel that takes a busy master for down fails over again while the killed one
    # is still rejoining; with 1000 ms, a loaded 2-CPU machine saw a second, unasked
    # failover and 11 s of split brain (docs/deploy.md, "What a failover can lose").
    down_after_ms: int = 2000


# ---- the balancer -------------------------------------------------------------------


class Balancer:
    """Round-robin TCP proxy over the live nodes."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self._next = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(max(1, len(self.ports))):
            if not self.ports:
                break
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


# ---- the nodes ----------------------------------------------------------------------


class Fleet:
    def __init__(self, env: dict[str, str], tmp: Path, balancer: Balancer) -> None:
        self._env = env
        self._tmp = tmp
        self._balancer = balancer
        self.nodes: dict[str, NodeProcess] = {}
        self.exit_codes: list[tuple[str, int | None]] = []
        self._starts = Counter[str]()

    def start(self, name: str, timeout: float = 30) -> NodeProcess:
        self._starts[name] += 1
        log_path = self._tmp / f"{name}-{self._starts[name]}.log"
        env = {**self._env, "BENCH_NODE_ID": f"chaos-{name}-{self._starts[name]}"}
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "bench.server"], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=log)
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            process.kill()
            raise RuntimeError(f"node {name} did not start: {log_path.read_text()[-2000:]}")
        node = NodeProcess(env["BENCH_NODE_ID"], process, int(line.split()[1]), log_path)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{node.base_url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {name} not healthy: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.nodes[name] = node
        self._balancer.ports.append(node.port)
        return node

    def _forget(self, name: str) -> NodeProcess:
        node = self.nodes.pop(name)
        with contextlib.suppress(ValueError):
            self._balancer.ports.remove(node.port)
        return node

    def kill(self, name: str) -> None:
        node = self._forget(name)
        node.process.send_signal(signal.SIGKILL)
        self.exit_codes.append((name, node.process.wait()))

    def terminate(self, name: str, timeout: float = 30) -> None:
        """SIGTERM, as a rolling deploy does; the node leaves the balancer first."""
        node = self._forget(name)
        node.process.send_signal(signal.SIGTERM)
        try:
            self.exit_codes.append((name, node.process.wait(timeout)))
        except subprocess.TimeoutExpired:
            node.process.kill()
            self.exit_codes.append((name, None))

    def stop_all(self) -> None:
        for name in list(self.nodes):
            node = self._forget(name)
            node.stop()

    def logs(self) -> list[Path]:
        return sorted(self._tmp.glob("*.log"))


# ---- the run ------------------------------------------------------------------------


@dataclass
class Started:
    call_id: str
    caller: str
    callee: str
    at: float  # wall clock, when the caller heard call.started


@dataclass
class Report:
    plan: Plan
    calls_started: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    actions: list[str] = field(default_factory=list)
    failovers: list[tuple[float, float]] = field(default_factory=list)  # (kill wall time, seconds to promote)
    pushes: Counter[str] = field(default_factory=Counter)
    status_checks: int = 0
    status_failed: Counter[str] = field(default_factory=Counter)
    # the invariants: each a list of what broke it
    ringing_late: list[str] = field(default_factory=list)
    two_answers: list[str] = field(default_factory=list)
    cancellation_not_once: list[str] = field(default_factory=list)
    status_untrue: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    calls_lost: list[str] = field(default_factory=list)
    calls_lost_in_window: int = 0
    kept: str = ""  # where the events and node logs of a failed run were kept
    masters: list[str] = field(default_factory=list)  # "<when> :<port>", each master named

    INVARIANTS = (
        ("ringing_late", "calls ringing past their deadline + 5 s"),
        ("two_answers", "calls answered twice"),
        ("cancellation_not_once", "pushed devices unaware of the end without exactly one cancellation push"),
        ("status_untrue", "status checks that did not tell the truth"),
        ("server_errors", "500s seen by a phone"),
        ("calls_lost", f"calls lost, created more than {LOSS_WINDOW_S:.0f} s before a failover"),
    )

    @property
    def violations(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name, _ in self.INVARIANTS if getattr(self, name)}

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        plan = self.plan
        out = [
            f"# chaos: {plan.seconds:.0f} s, seed {plan.seed}, ring timeout {plan.ring_timeout:.0f} s, "
            f"{plan.callers} callers",
            f"chaos: {', '.join(self.actions)}",
            f"calls started {self.calls_started}; outcomes {dict(sorted(self.outcomes.items()))}; "
            f"refused {dict(self.refused)}; client errors {dict(self.client_errors)}",
            f"pushes received {dict(sorted(self.pushes.items()))}; status checks {self.status_checks}, "
            f"failed {dict(self.status_failed)}",
            "failovers: " + ", ".join(f"promoted after {s:.2f} s" for _, s in self.failovers),
            f"masters named by the Sentinels: {', '.join(self.masters)}",
            f"calls lost inside the {LOSS_WINDOW_S:.0f} s window before a failover (allowed): "
            f"{self.calls_lost_in_window}",
        ]
        for name, label in self.INVARIANTS:
            broken = getattr(self, name)
            out.append(f"{'FAIL' if broken else 'ok  '} {len(broken):4d} {label}")
            out += [f"       {item}" for item in broken[:8]]
        if self.kept:
            out.append(f"events and node logs kept in {self.kept}")
        return out


class Chaos:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.report = Report(plan)
        self.log = EventLog(clock=time.time)
        self.started: dict[str, Started] = {}
        self.phones: list[Phone] = []
        self._secret = "chaos-secret-" + "x" * 32
        self._prefix = f"chaos-{plan.seed}-{os.getpid()}:"

    async def run(self) -> Report:
        tmp = Path(tempfile.mkdtemp(prefix="voip-chaos-"))
        try:
            return await self._run(tmp)
        finally:
            if self.report.ok:
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # what the phones saw, and the nodes' logs, for whoever looks into it
                with (tmp / "events.jsonl").open("wb") as out:
                    for event in self.log.events:
                        out.write(orjson.dumps({"at": event.at, "device": event.device, "kind": event.kind,
                                                "call_id": event.call_id, **event.detail}) + b"\n")
                self.report.kept = str(tmp)

    async def _run(self, tmp: Path) -> Report:
        redis_set = SentinelRedis(down_after_ms=self.plan.down_after_ms)
        await asyncio.to_thread(redis_set.start)
        balancer = Balancer()
        await balancer.start()
        fleet: Fleet | None = None
        try:
            async with APNsSimulator(tmp / "apns") as sim:
                key = sim.create_key("TEAM000001", "KEY0000001")
                key_file = tmp / "AuthKey.p8"
                key_file.write_text(key.private_pem)
                env = {
                    **os.environ, **redis_set.env(),
                    "BENCH_PREFIX": self._prefix, "BENCH_SECRET": self._secret,
                    "BENCH_RING_TIMEOUT": str(self.plan.ring_timeout),
                    "VOIP_PUBLIC_URL": balancer.url,
                    "APNS_KEY_FILE": str(key_file), "APNS_KEY_ID": key.key_id, "APNS_TEAM_ID": key.team_id,
                    "APNS_BUNDLE_ID": BUNDLE, "APNS_ENDPOINT": sim.endpoint, "APNS_CA_FILE": str(sim.ca_file),
                    "PYTHONPATH": str(ROOT),
                }
                env.pop("REDIS_URL", None)
                fleet = Fleet(env, tmp, balancer)
                for name in ("n1", "n2", "n3"):
                    await asyncio.to_thread(fleet.start, name)
                await self._traffic_and_chaos(sim, fleet, redis_set, Backend(balancer.url, Authenticator(self._secret), sim, BUNDLE))
                await self._check(redis_set)
        finally:
            for phone in self.phones:
                with contextlib.suppress(Exception):
                    await phone.aclose()
            if fleet is not None:
                await asyncio.to_thread(fleet.stop_all)
            await balancer.stop()
            await asyncio.to_thread(redis_set.stop, None if self.report.ok else tmp / "redis")
        return self.report

    # -- traffic --------------------------------------------------------------------
    async def _phones(self, backend: Backend) -> tuple[list[Phone], list[str]]:
        callers = [Phone(backend, f"caller{i}", f"caller{i}-a", log=self.log) for i in range(self.plan.callers)]
        # Two devices per callee, so answers race; every policy the app has.
        policies = {
            "racer": (Policy.answer(0.6), Policy.answer(0.6)),
            "decider": (Policy.decline(1.0), Policy.answer(1.5)),
            "decliner": (Policy.decline(0.8), Policy.ignore()),
            "sleeper": (Policy.ignore(), Policy.ignore()),
        }
        callees = [
            Phone(backend, user, f"{user}-{side}", policy=policy, log=self.log)
            for user, pair in policies.items() for side, policy in zip("ab", pair)
        ]
        self.phones = callers + callees
        for phone in self.phones:
            await phone.install()
        return callers, list(policies)

    async def _caller(self, phone: Phone, callees: list[str], rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            callee = rng.choice(callees)
            hold = rng.uniform(0.5, self.plan.ring_timeout * 1.4)
            try:
                call_id = await phone.call(callee)
            except CallRefused as refused:
                self.report.refused[str(refused.frame.get("code"))] += 1
                await asyncio.sleep(0.5)
                continue
            except Exception as exc:  # a node died under the request, Redis failing over...
                self.report.client_errors[f"call.start {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            self.started[call_id] = Started(call_id, phone.user, callee, time.time())
            await asyncio.sleep(hold)
            call = phone.calls.get(call_id)
            if call is not None and call.active:
                try:
                    await phone.hang_up(call_id)
                except Exception as exc:
                    self.report.client_errors[f"call.hangup {type(exc).__name__}"] += 1
            await asyncio.sleep(rng.uniform(0.1, 0.4))

    async def _callee_naps(self, phone: Phone, rng: random.Random, stop: asyncio.Event) -> None:
        # Apps go to the background: then only a push reaches them. A sleeper's app is
        # suspended even while its call rings, so the end of the call reaches it by push.
        sleeper = phone.user == "sleeper"
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.3, 1.5) if sleeper else rng.uniform(1.5, 4.0))
            if sleeper or not any(call.active for call in phone.calls.values()):
                with contextlib.suppress(Exception):
                    await phone.close_app()

    async def _traffic_and_chaos(self, sim: APNsSimulator, fleet: Fleet, redis_set: SentinelRedis,
                                 backend: Backend) -> None:
        callers, callees = await self._phones(backend)
        began = time.monotonic()
        # Calls go on for the plan's seconds and until every step of the chaos has run: on
        # a loaded machine a failover or a restart can take longer than its slot, and a
        # step skipped would be a fault never tried.
        stop = asyncio.Event()
        work = [
            asyncio.create_task(self._caller(phone, callees, random.Random(self.rng.random()), stop))
            for phone in callers
        ] + [
            asyncio.create_task(self._callee_naps(phone, random.Random(self.rng.random()), stop))
            for phone in self.phones if phone not in callers
        ]
        chaos = asyncio.create_task(self._chaos(sim, fleet, redis_set, began))
        watch = asyncio.create_task(self._watch_master(redis_set, began))
        await asyncio.sleep(self.plan.seconds)
        await chaos
        stop.set()
        await asyncio.gather(*work)
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        # Let every call end by itself and every push land: a ring timeout, then margin.
        await asyncio.sleep(self.plan.ring_timeout + LATE_MS / 1000 + 2)

    async def _watch_master(self, redis_set: SentinelRedis, began: float) -> None:
        """Every master the Sentinels name, and when: a failover nobody asked for shows."""
        current = None
        while True:
            port = await asyncio.to_thread(redis_set.master_port)
            if port is not None and port != current:
                self.report.masters.append(f"{time.monotonic() - began:.1f}s :{port}")
                current = port
            await asyncio.sleep(0.25)

    async def _chaos(self, sim: APNsSimulator, fleet: Fleet, redis_set: SentinelRedis,
                     began: float) -> None:
        """Every 30 s (scaled down for shorter runs): APNs faults throughout, a node
        killed and restarted, Redis failed over, a node drained and restarted."""
        cycle = min(30.0, self.plan.seconds)
        rng = random.Random(self.rng.random())
        steps: list[tuple[float, str]] = []
        offset = 0.0
        while offset + cycle <= self.plan.seconds + 0.01:
            steps += [
                (offset + 0.2 * cycle, "kill"),
                (offset + 0.4 * cycle, "failover"),
                (offset + 0.6 * cycle, "drain"),
            ]
            steps += [(offset + t, "apns") for t in (0.1 * cycle, 0.3 * cycle, 0.5 * cycle, 0.7 * cycle, 0.8 * cycle)]
            offset += cycle
        steps.sort()
        names = ["n1", "n2", "n3"]
        faults = iter(APNS_FAULTS[i % len(APNS_FAULTS)] for i in range(rng.randrange(len(APNS_FAULTS)), 10**6))
        for at, step in steps:
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            if step == "apns":
                label, fault = next(faults)  # each kind in turn: a 30 s run sees them all
                sim.inject(fault(), times=2)
                self.report.actions.append(f"{at:.0f}s APNs {label}")
            elif step == "kill":
                name = rng.choice(names)
                await asyncio.to_thread(fleet.kill, name)
                self.report.actions.append(f"{at:.0f}s kill -9 {name}")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(fleet.start, name)
            elif step == "failover":
                killed_at = time.time()
                promoted = await asyncio.to_thread(redis_set.failover)
                self.report.failovers.append((killed_at, promoted))
                self.report.actions.append(f"{at:.0f}s Redis failover")
            elif step == "drain":
                name = rng.choice(names)
                await asyncio.to_thread(fleet.terminate, name)
                self.report.actions.append(f"{at:.0f}s SIGTERM {name}")
                await asyncio.to_thread(fleet.start, name)

    # -- the checks -----------------------------------------------------------------
    async def _check(self, redis_set: SentinelRedis) -> None:
        report = self.report
        settings = load_settings(jwt_secret=self._secret, redis_prefix=self._prefix, **redis_set.settings())
        connections = RedisConnections.from_settings(settings)
        stores = Stores.open(connections.client, self._prefix, retention=86400)
        now_ms = time.time() * 1000
        calls: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
        try:
            for call_id, started in self.started.items():
                call = await stores.calls.get(call_id)
                if call is None:
                    if any(kill - LOSS_WINDOW_S <= started.at <= kill + promoted + 1
                           for kill, promoted in report.failovers):
                        report.calls_lost_in_window += 1
                    else:
                        report.calls_lost.append(f"{call_id} (created {started.at:.2f})")
                    continue
                calls[call_id] = (call, await stores.calls.timeline(call_id))
        finally:
            await connections.aclose()
        report.calls_started = len(self.started)
        for call_id, (call, timeline) in calls.items():
            report.outcomes[call.state.value] += 1
            self._check_call(call_id, call, timeline, now_ms)
        self._check_devices(calls)

    def _check_call(self, call_id: str, call: Any, timeline: list[dict[str, Any]], now_ms: float) -> None:
        report = self.report
        if call.state is CallState.RINGING and now_ms > call.ring_deadline + LATE_MS:
            report.ringing_late.append(f"{call_id}: still ringing {(now_ms - call.ring_deadline) / 1000:.1f} s past")
        states = [e for e in timeline if e.get("event") == "state"]
        for entry in states:
            if entry.get("from", "ringing") == "ringing" and entry["at"] > call.ring_deadline + LATE_MS:
                report.ringing_late.append(
                    f"{call_id}: left ringing ({entry['to']}) {(entry['at'] - call.ring_deadline) / 1000:.1f} s late"
                )
        answers = [e for e in states if e.get("to") == "answered"]
        connected = {e.device for e in self.log.find("callkit.connected", call_id=call_id)
                     if not e.device.startswith("caller")}
        if len(answers) > 1 or len(connected) > 1:
            report.two_answers.append(f"{call_id}: {len(answers)} answers, connected on {sorted(connected)}")

    def _check_devices(self, calls: dict[str, tuple[Any, list[dict[str, Any]]]]) -> None:
        report = self.report
        started_wall = self.log.started
        by_pair: dict[tuple[str, str], list[Any]] = {}
        for event in self.log.events:
            if event.call_id is not None:
                by_pair.setdefault((event.device, event.call_id), []).append(event)
            if event.kind == "push.received":
                report.pushes[str(event.detail.get("type"))] += 1
            elif event.kind == "status.failed":
                report.status_failed[str(event.detail.get("http") or event.detail.get("error"))] += 1
                if event.detail.get("http") == 500:
                    report.server_errors.append(f"{event.device} status {event.call_id}: 500")
            elif event.kind == "ws.received" and event.detail.get("type") == "error" \
                    and event.detail.get("code") == "internal_error":
                report.server_errors.append(f"{event.device} ws {event.call_id}: internal_error")
            elif event.kind == "app.error":
                report.client_errors[f"app {str(event.detail.get('error'))[:60]}"] += 1
        for (device, call_id), events in by_pair.items():
            if call_id not in calls:
                continue
            call, timeline = calls[call_id]
            kinds = [(e.kind, e.detail) for e in events]
            pushes = [d.get("type") for k, d in kinds if k == "push.received"]
            if INCOMING not in pushes:
                continue
            # An invite delayed by APNs can arrive after the cancellation; the node then
            # cancels again, and that cancellation is the one that counts.
            last_invite = len(pushes) - 1 - pushes[::-1].index(INCOMING)
            cancels = pushes[last_invite:].count(CANCELLED)
            learned = any(
                (k == "ws.received" and (d.get("type") in ENDING_FRAMES or d.get("type") == "call.answered_elsewhere"))
                or k in ("callkit.end_action", "callkit.answer_action")
                or (k == "status.checked" and d.get("end_call"))
                for k, d in kinds
            )
            if not learned and cancels != 1 and call.state.is_final:
                report.cancellation_not_once.append(f"{device} {call_id}: {cancels} cancellations, final {call.state.value}")
            for event in events:
                if event.kind != "status.checked":
                    continue
                report.status_checks += 1
                said = event.detail.get("state")
                at_ms = (started_wall + event.at) * 1000
                if said not in _states_around(call, timeline, at_ms):
                    report.status_untrue.append(f"{device} {call_id}: said {said} at {at_ms:.0f}, final {call.state.value}")


def _states_around(call: Any, timeline: list[dict[str, Any]], at_ms: float, slack_ms: float = 1500) -> set[str]:
    """States the call held within `slack_ms` of `at_ms` (the phone's clock is this one,
    but the answer was computed somewhere between asking and hearing)."""
    changes = [(call.created_at, "ringing")] + [
        (e["at"], e["to"]) for e in timeline if e.get("event") == "state"
    ]
    changes.sort()
    held: set[str] = set()
    for index, (since, state) in enumerate(changes):
        until = changes[index + 1][0] if index + 1 < len(changes) else float("inf")
        if since <= at_ms + slack_ms and until >= at_ms - slack_ms:
            held.add(state)
    return held


async def run(plan: Plan) -> Report:
    return await Chaos(plan).run()


def main(seconds: float = 180.0, seed: int = 1) -> int:
    began = time.monotonic()
    report = asyncio.run(run(Plan(seconds=seconds, seed=seed)))
    print("\n".join(report.lines()))
    print(f"# done in {time.monotonic() - began:.0f} s: {'PASS' if report.ok else 'FAIL'}")
    return 0 if report.ok else 1
