"""`python -m voip demo`: the README story, live, in one process.

A private Redis (unless REDIS_URL is set), a node on embedded defaults pushing to the
bundled APNs and FCM simulators, and simulated phones (voip.devicesim). Four scenarios,
each narrated as it happens: an offline phone that wakes to the cancellation instead of
the invite; an invite APNs delivers late, which the status check ends at once; a call
answered on one of two devices; an Android phone, asleep through one call over FCM and
answering the next.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import uvicorn

from apnsim import Fault
from fcmsim import Device as FCMDevice
from voip import logs
from voip.app import create_app
from voip.devicesim import AndroidPhone, Backend, Event, EventLog, Phone, Policy
from voip.node import Node
from voip.redis_server import PrivateRedis
from voip.settings import Settings, SettingsError, load_settings
from voip.ws_protocol import LeanWebSocketProtocol

RING_TIMEOUT = 3.0  # seconds; short, so the late-delivery scenario need not wait long


class DemoFailure(Exception):
    """The service did not behave as the story says."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


class Narrator:
    def __init__(self, log: EventLog, write: Callable[[str], None]) -> None:
        self.log = log
        self.write = write
        self.android: set[str] = set()
        """Devices that are Android phones: their pushes come from FCM."""
        log.listen(self.on_event)

    def say(self, who: str, text: str) -> None:
        self.write(f"[{self.log.now():6.2f}s] {who:<11} {text}")

    def section(self, title: str) -> None:
        self.write("")
        self.write(f"== {title}")

    def on_event(self, event: Event) -> None:
        text = describe_android(event) if event.device in self.android else describe(event)
        if text is not None:
            self.write(f"[{event.at:6.2f}s] {event.device:<11} {text}")


def short(call_id: str | None) -> str:
    return f"call {call_id[:8]}" if call_id else "call ?"


def describe(event: Event) -> str | None:
    d, call = event.detail, short(event.call_id)
    match event.kind:
        case "registered":
            state = "online" if d.get("online") else "offline"
            return f"PUT /v1/devices: VoIP token {d['token']} ({d['environment']}); phone is {state}"
        case "network.offline":
            return "goes offline (asleep): APNs will hold its pushes"
        case "network.online":
            return "wakes up, back online"
        case "network.lost":
            return "loses its network; its WebSocket stays half-open on the server"
        case "net.lost":
            return f"  ({d['type']} for {call} is lost on the dead socket; the app never sees it)"
        case "ws.connected":
            return "WebSocket connected"
        case "push.received":
            how = " (stored by APNs)" if d.get("stored") else ""
            late = ", LATE: past its apns-expiration" if d.get("late") else ""
            return f"PushKit: VoIP push {d['type']} for {call}{how}{late}"
        case "callkit.reported" if d.get("placeholder"):
            return f"CallKit: reportNewIncomingCall for {call}, ended at once ({d['why']})"
        case "callkit.reported":
            return f"CallKit: reportNewIncomingCall {call} from {d['caller']!r}: it rings"
        case "callkit.duplicate":
            return f"CallKit: {call} reported already; the duplicate rings nothing"
        case "callkit.ended" if d.get("placeholder"):
            return f"CallKit: reportCall(endedAt:reason: .{d['reason']}) for {call}"
        case "callkit.ended":
            how = "rang" if d["was"] == "ringing" else "lasted"
            return f"CallKit: reportCall(endedAt:reason: .{d['reason']}) for {call}, {how} {d['lasted']:.2f}s"
        case "callkit.start_call":
            return f"CallKit: CXStartCallAction, calls {d['callee']} ({call})"
        case "callkit.end_action":
            return f"CallKit: CXEndCallAction, the user hangs up ({call})"
        case "callkit.answer_action":
            return f"CallKit: CXAnswerCallAction, the user answers ({call})"
        case "callkit.connected":
            return f"CallKit: {call} connected"
        case "callkit.ringback":
            return f"hears ringback: {d['ringing']} is ringing"
        case "status.checked":
            return (
                f"GET status_url -> {d['http']} state={d['state']} end_call={str(d['end_call']).lower()}"
                f" reason={d['reason'] or 'null'}"
            )
        case "status.retry":
            return f"  no verdict for {call}: asks status_url again in {d['after']}s"
        case "ring.expired":
            return f"{call} reached its expires_at still ringing: the app ends it"
        case "ws.dropped":
            return "its WebSocket dies under the call (a network handover)"
        case "status.failed" | "push.not_reported" | "app.error":
            return f"{event.kind}: {d}"
        case "ws.sent":
            return f"-> {d['type']}"
        case "ws.received" if d.get("type") not in ("ack", "call.started"):
            extra = f" reason={d['reason']}" if d.get("reason") else ""
            return f"<- {d['type']}{extra}"
    return None


def describe_android(event: Event) -> str | None:
    """An Android phone's events: FCM data messages, a self-managed ConnectionService
    call shown by a full-screen-intent notification (the simulator's CallKit model)."""
    d, call = event.detail, short(event.call_id)
    match event.kind:
        case "registered":
            state = "online" if d.get("online") else "offline"
            return f"PUT /v1/devices: platform android, FCM token {d['token']}; phone is {state}"
        case "network.offline":
            return "goes offline (asleep): FCM will hold its messages, one per call"
        case "push.received":
            how = " (stored by FCM)" if d.get("stored") else ""
            return f"FCM: data message {d['type']} for {call}{how}"
        case "push.not_reported":
            return f"shows nothing yet for {call} ({d['why']})"
        case "callkit.reported":
            return (
                f"ConnectionService: addNewIncomingCall {call} from {d['caller']!r}, full-screen notification: it rings"
            )
        case "callkit.ended":
            return f"ConnectionService: setDisconnected({d['reason']}) for {call}"
        case "callkit.answer_action":
            return f"ConnectionService: onAnswer, the user answers ({call})"
        case "callkit.connected":
            return f"ConnectionService: {call} active"
    return describe(event)


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def pending(phone: Phone) -> str | None:
    assert phone.apns_device is not None
    push = phone.apns_device.pending
    return str(push.payload.get("type")) if push is not None else None


def inbox(phone: Phone, call_id: str) -> list[str]:
    assert phone.apns_device is not None
    return [d.push.payload["type"] for d in phone.apns_device.inbox if d.push.payload.get("call_id") == call_id]


# ---- the three scenarios ---------------------------------------------------------------


async def offline_phone(backend: Backend, log: EventLog, story: Narrator) -> tuple[Phone, Phone]:
    story.section("1. Bob's phone is asleep. Alice calls, then gives up.")
    alice = Phone(backend, "alice", "alice-phone", log=log, name="Alice")
    await alice.install()
    await alice.open_app()
    bob = Phone(backend, "bob", "bob-phone", log=log)
    await bob.install(online=False)

    call_id = await alice.call("bob")
    await until(lambda: pending(bob) == "call.incoming", "APNs holds the invite")
    story.say("APNs", f"holds the invite for bob-phone (offline) until the ring deadline ({short(call_id)})")
    await asyncio.sleep(1.0)
    story.say("alice", "gives up")
    await alice.hang_up(call_id)
    await until(lambda: pending(bob) == "call.cancelled", "the cancellation is stored")
    assert bob.apns_device is not None
    displaced = [drop.push.payload["type"] for drop in bob.apns_device.dropped if drop.cause == "displaced"]
    check(displaced == ["call.incoming"], f"the stored invite was not displaced: {displaced}")
    story.say("APNs", "the cancellation displaced the stored invite (same apns-collapse-id)")

    await asyncio.sleep(0.5)
    await bob.wake()
    await bob.wait_for("callkit.ended", call_id=call_id)
    check(inbox(bob, call_id) == ["call.cancelled"], f"bob-phone received {inbox(bob, call_id)}")
    check(not bob.events("status.checked", call_id=call_id), "a cancellation needs no status check")
    story.say("result", "Bob's phone received the cancellation, not the invite: no ghost call")
    return alice, bob


async def late_invite(backend: Backend, alice: Phone, bob: Phone, story: Narrator) -> None:
    story.section("2. An invite APNs delivers late: the status check ends it at once.")
    await bob.open_app()
    bob.lose_network()
    call_id = await alice.call("bob")
    await until(lambda: pending(bob) == "call.incoming", "APNs holds the invite")
    story.say("APNs", f"holds the invite for bob-phone ({short(call_id)})")
    await asyncio.sleep(1.0)
    story.say("alice", "gives up")
    await alice.hang_up(call_id)
    await asyncio.sleep(0.3)
    check(pending(bob) == "call.incoming", f"APNs holds {pending(bob)} for bob-phone")
    story.say("server", "believed bob-phone connected: call.cancelled went down its socket, no cancellation push")

    assert bob.apns_device is not None and bob.apns_device.pending is not None
    expiration = bob.apns_device.pending.expiration or 0
    await until(lambda: time.time() > expiration + 0.05, "the invite expires", timeout=RING_TIMEOUT + 2)
    backend.apns.inject(Fault.late_delivery(), token=bob.token)
    story.say("APNs", "the invite's apns-expiration has passed; fault injected: it is delivered anyway")
    await bob.regain_network()
    ended = await bob.wait_for("callkit.ended", call_id=call_id)
    [status] = bob.events("status.checked", call_id=call_id)
    check(
        status.detail["end_call"] is True and status.detail["reason"] == "remote_ended", f"status said {status.detail}"
    )
    check(ended.detail["reason"] == "remoteEnded", f"CallKit ended with {ended.detail['reason']}")
    check(bool(bob.events("push.received", call_id=call_id, late=True)), "the invite was not late")
    story.say(
        "result",
        f"the late invite rang for {ended.detail['lasted'] * 1000:.0f} ms, then ended with .remoteEnded: no ghost call",
    )


async def answered_elsewhere(backend: Backend, log: EventLog, alice: Phone, bob: Phone, story: Narrator) -> Phone:
    story.section("3. Bob has a phone and an iPad. The phone answers; the iPad stops ringing.")
    bob.policy = Policy.answer(after=1.0)
    ipad = Phone(backend, "bob", "bob-ipad", log=log)
    await ipad.install()
    call_id = await alice.call("bob")
    await bob.wait_for("callkit.connected", call_id=call_id)
    await alice.wait_for("callkit.connected", call_id=call_id)
    ended = await ipad.wait_for("callkit.ended", call_id=call_id)
    check(ended.detail["reason"] == "answeredElsewhere", f"the iPad ended with {ended.detail['reason']}")
    story.say("result", "the iPad ended its call with .answeredElsewhere")
    await asyncio.sleep(0.5)
    story.say("alice", "hangs up after a short talk")
    await alice.hang_up(call_id)
    remote = await bob.wait_for("callkit.ended", call_id=call_id)
    check(remote.detail["reason"] == "remoteEnded", f"bob-phone ended with {remote.detail['reason']}")
    return ipad


def stored_by_fcm(device: FCMDevice) -> list[str]:
    return [stored.message.data.get("type", "?") for stored in device.pending]


async def android_phone(backend: Backend, log: EventLog, alice: Phone, story: Narrator) -> Phone:
    story.section("4. Carol has an Android phone, asleep. Alice calls and gives up; then calls again.")
    assert backend.fcm is not None
    story.android.add("carol-pixel")
    carol = AndroidPhone(backend, "carol", "carol-pixel", log=log, policy=Policy.answer(after=0.5))
    await carol.install(online=False)
    device = backend.fcm.device(carol.token)

    call_id = await alice.call("carol", caller_name="Alice")
    await until(lambda: stored_by_fcm(device) == ["call.incoming"], "FCM stores the invite")
    story.say(
        "FCM", f"stores the data message for carol-pixel (offline), its ttl the ring time left ({short(call_id)})"
    )
    await asyncio.sleep(0.5)
    story.say("alice", "gives up")
    await alice.hang_up(call_id)
    await until(lambda: stored_by_fcm(device) == ["call.cancelled"], "FCM stores the cancellation")
    story.say("FCM", "the cancellation displaced the stored invite (same collapse_key: the call id)")
    await carol.wake()
    await carol.wait_for("push.not_reported", call_id=call_id)
    check(not carol.events("callkit.reported", call_id=call_id), "carol-pixel showed the cancelled call")
    story.say("result", "Carol's phone woke to the cancellation and showed nothing: no ghost call")

    again = await alice.call("carol", caller_name="Alice")
    await carol.wait_for("callkit.connected", call_id=again)
    await alice.wait_for("callkit.connected", call_id=again)
    check(bool(carol.events("status.checked", call_id=again, state="ringing")), "carol-pixel rang without asking")
    story.say("result", "online, Carol's phone asked status_url, rang and answered")
    await alice.hang_up(again)
    await carol.wait_for("callkit.ended", call_id=again)
    return carol


# ---- the node --------------------------------------------------------------------------


def demo_settings(redis_url: str, port: int) -> Settings:
    return load_settings(
        environment="development",
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        node_id="demo-node",
        redis_url=redis_url,
        redis_prefix=f"demo-{secrets.token_hex(4)}:",
        jwt_secret=secrets.token_urlsafe(32),
        ring_timeout=RING_TIMEOUT,
        # The story needs the bundled simulator, whatever the environment configures.
        apns_key_file="",
        apns_apps={},
        apns_endpoint="",
        apns_ca_file="",
        fcm_credentials_file="",
        fcm_project_id="",
        fcm_endpoint="",
        fcm_ca_file="",
        sip_enabled=False,
        log_level="error",
    )


@asynccontextmanager
async def running_node(redis_url: str) -> AsyncIterator[tuple[Node, str]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # bound first: the port goes into status_url
    port = listener.getsockname()[1]
    settings = demo_settings(redis_url, port)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            ws=LeanWebSocketProtocol,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
            raise DemoFailure("the node stopped while starting")
        await asyncio.sleep(0.01)
    node: Node = app.state.node
    try:
        yield node, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        await forget_keys(redis_url, settings.redis_prefix)


async def forget_keys(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            await client.delete(key)
    finally:
        await client.aclose()


async def run_demo(redis_url: str, log: EventLog, story: Narrator) -> None:
    async with running_node(redis_url) as (node, base_url):
        backend = Backend.of_node(node, base_url)
        assert node.apns_simulator is not None
        story.say("demo", f"node {node.node_id} at {base_url}, ring timeout {RING_TIMEOUT:g}s")
        story.say(
            "demo",
            f"APNs: bundled simulator at {node.apns_simulator.endpoint} "
            f"({node.apns_simulator.environment}), topic {backend.voip_topic}",
        )
        assert node.fcm_simulator is not None
        story.say("demo", f"FCM: bundled simulator at {node.fcm_simulator.endpoint}, a throwaway service account")
        phones: list[Phone] = []
        try:
            alice, bob = await offline_phone(backend, log, story)
            phones += [alice, bob]
            await late_invite(backend, alice, bob, story)
            phones.append(await answered_elsewhere(backend, log, alice, bob, story))
            phones.append(await android_phone(backend, log, alice, story))
            errors = log.find("app.error")
            check(not errors, f"a simulated app failed: {errors}")
        finally:
            for phone in phones:
                await phone.aclose()


def main(write: Callable[[str], None] | None = None) -> int:
    out = write or (lambda line: print(line, flush=True))
    log = EventLog()
    story = Narrator(log, out)
    logs.configure("error")
    redis_url = os.environ.get("REDIS_URL", "")
    private: PrivateRedis | None = None
    if redis_url:
        story.say("demo", "Redis: REDIS_URL")
    else:
        private = PrivateRedis().start()
        redis_url = private.url
        story.say("demo", f"Redis: REDIS_URL not set; private redis-server at {private.url}")
    try:
        asyncio.run(asyncio.wait_for(run_demo(redis_url, log, story), 60))
    except (DemoFailure, SettingsError, AssertionError) as exc:
        out(f"demo FAILED: {exc}")
        return 1
    finally:
        if private is not None:
            private.stop()
    out("")
    story.say("demo", "done: 4 scenarios, no ghost call")
    return 0
