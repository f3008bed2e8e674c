"""Simulated iPhones (voip.devicesim) against a real node, real Redis and the APNs
simulator: what the app sees and does, from its event log."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from apnsim import APNsSimulator, Fault
from tests.conftest import BUNDLE, RunningNode
from tests.ports import free_port
from voip.devicesim import Backend, CXCallEndedReason, EventLog, Phone, Policy, StatusRetry

ROOT = Path(__file__).resolve().parent.parent


class World:
    """A node, its APNs, and the phones of one test, sharing one event log."""

    def __init__(self, node: RunningNode, sim: APNsSimulator) -> None:
        self.node = node
        self.sim = sim
        self.backend = Backend(node.base_url, node.auth, sim, BUNDLE)
        self.log = EventLog()
        self.phones: list[Phone] = []

    async def phone(
        self,
        user: str,
        device: str,
        *,
        online: bool = True,
        app_open: bool = False,
        policy: Policy | None = None,
        name: str | None = None,
    ) -> Phone:
        phone = Phone(self.backend, user, device, policy=policy, log=self.log, name=name)
        self.phones.append(phone)
        await phone.install(online=online)
        if app_open:
            await phone.open_app()
        return phone

    async def close(self) -> None:
        for phone in self.phones:
            await phone.aclose()
        assert not self.log.find("app.error"), self.log.find("app.error")


async def make_world(node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]], **settings: Any) -> World:
    sim, apns_settings = apns
    return World(await node_factory(**apns_settings, **settings), sim)


@pytest.fixture
async def world(node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]) -> AsyncIterator[World]:
    made = await make_world(node_factory, apns)
    yield made
    await made.close()


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def pending_type(phone: Phone) -> str | None:
    assert phone.apns_device is not None
    push = phone.apns_device.pending
    return None if push is None else str(push.payload["type"])


async def test_offline_phone_wakes_to_the_cancellation_and_never_rings(world: World) -> None:
    alice = await world.phone("alice", "a-phone", app_open=True)
    bob = await world.phone("bob", "b-phone", online=False)
    call_id = await alice.call("bob")
    await until(lambda: pending_type(bob) == "call.incoming")
    await alice.hang_up(call_id)
    await until(lambda: pending_type(bob) == "call.cancelled")

    await bob.wake()
    ended = await bob.wait_for("callkit.ended", call_id=call_id)

    [push] = bob.events("push.received", call_id=call_id)
    assert push.detail["type"] == "call.cancelled" and push.detail["stored"] is True
    # Reported (PushKit demands it) and ended in the same instant: nothing rang.
    [reported] = bob.events("callkit.reported", call_id=call_id)
    assert reported.detail["placeholder"] is True and ended.detail["lasted"] < 0.01
    assert bob.log.kinds(device="b-phone", call_id=call_id) == ["push.received", "callkit.reported", "callkit.ended"]
    assert ended.detail["reason"] == CXCallEndedReason.REMOTE_ENDED
    assert not bob.events("status.checked") and not bob.events("ws.sent")


async def test_late_invite_is_ended_with_remote_ended_after_its_status_check(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    # apns-expiration is the deadline floored to a second: under 2 s an invite could
    # reach APNs already expired and never be stored.
    world = await make_world(node_factory, apns, ring_timeout=2)
    try:
        alice = await world.phone("alice", "a-phone", app_open=True)
        bob = await world.phone("bob", "b-phone", app_open=True)
        bob.lose_network()  # the server still counts its half-open socket as connected
        call_id = await alice.call("bob")
        await until(lambda: pending_type(bob) == "call.incoming")
        await alice.hang_up(call_id)
        await bob.wait_for("net.lost", call_id=call_id, type="call.cancelled")
        assert pending_type(bob) == "call.incoming"  # no cancellation push displaced it

        assert bob.apns_device is not None and bob.apns_device.pending is not None
        expiration = bob.apns_device.pending.expiration or 0
        # The expiration is the deadline rounded up to a second: up to 3 s away here.
        await until(lambda: time.time() > expiration + 0.05, timeout=expiration + 1 - time.time())
        world.sim.inject(Fault.late_delivery(), token=bob.token)
        await bob.regain_network()
        ended = await bob.wait_for("callkit.ended", call_id=call_id)

        [push] = bob.events("push.received", call_id=call_id)
        assert push.detail == {"type": "call.incoming", "stored": True, "late": True}
        assert bob.log.kinds(device="b-phone", call_id=call_id)[-4:] == [
            "push.received",
            "callkit.reported",
            "status.checked",
            "callkit.ended",
        ]
        [status] = bob.events("status.checked", call_id=call_id)
        assert status.detail == {"http": 200, "state": "cancelled", "end_call": True, "reason": "remote_ended"}
        assert ended.detail["reason"] == "remoteEnded" and ended.detail["was"] == "ringing"
        assert not bob.events("ws.sent", call_id=call_id)  # it never told anyone it rang
    finally:
        await world.close()


async def test_status_unreachable_the_app_retries_with_backoff_and_ends_the_call_at_expires_at(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    # Every status_url points at a port where nothing listens: the app never gets a verdict.
    world = await make_world(node_factory, apns, ring_timeout=3, public_url=f"http://127.0.0.1:{free_port()}")
    try:
        bob = Phone(world.backend, "bob", "b-phone", log=world.log, status_retry=StatusRetry(first=0.2, cap=0.8))
        world.phones.append(bob)
        await bob.install()
        caller = await world.node.device("alice", "a1")
        call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
        await bob.wait_for("push.received", call_id=call_id, type="call.incoming")
        # APNs holds the ring timeout's cancellation push: only the app's own deadline
        # can end the call.
        assert bob.apns_device is not None
        bob.apns_device.go_offline()

        ended = await bob.wait_for("callkit.ended", call_id=call_id, timeout=10)
        assert ended.detail["reason"] == "unanswered" and ended.detail["was"] == "ringing"
        [_expired] = bob.events("ring.expired", call_id=call_id)
        kinds = bob.log.kinds(device="b-phone", call_id=call_id)
        assert kinds.index("ring.expired") == kinds.index("callkit.ended") - 1
        # Asked again and again, doubling the wait up to the cap, never a verdict.
        failed = bob.events("status.failed", call_id=call_id)
        retries = [e.detail["after"] for e in bob.events("status.retry", call_id=call_id)]
        assert len(failed) >= 4 and not bob.events("status.checked", call_id=call_id)
        assert retries[:3] == [0.2, 0.4, 0.8] and all(after <= 0.8 for after in retries)
        # The last failure may or may not be followed by a retry before the deadline.
        for before, after, pause in zip(failed, failed[1:], retries, strict=False):
            assert after.at - before.at >= pause - 0.01
        # The deadline is the push's expires_at: nothing ended the call before it.
        [push] = bob.apns_device.inbox
        expires_in = (push.push.payload["expires_at"] - push.push.payload["sent_at"]) / 1000
        assert ended.at - bob.events("push.received", call_id=call_id)[0].at >= expires_in - 0.5
        assert not bob.events("ws.sent", call_id=call_id)  # it never said it rang
        await until(lambda: pending_type(bob) == "call.cancelled")  # held by APNs, as said
    finally:
        await world.close()


async def test_a_phone_whose_socket_died_mid_call_hears_the_hang_up_by_push(world: World) -> None:
    alice = await world.phone("alice", "a-phone", app_open=True)
    bob = await world.phone("bob", "b-phone", policy=Policy.answer(after=0.1))
    call_id = await alice.call("bob")
    await bob.wait_for("callkit.connected", call_id=call_id)
    await alice.wait_for("callkit.connected", call_id=call_id)

    bob.drop_socket()
    await bob.wait_for("ws.closed")
    stores = world.node.node.stores
    deadline = time.monotonic() + 5
    while "b-phone" in (await stores.devices.reachable("bob"))[1]:  # the node noticed
        assert time.monotonic() < deadline, "b-phone still present"
        await asyncio.sleep(0.02)
    await alice.hang_up(call_id)

    ended = await bob.wait_for("callkit.ended", call_id=call_id)
    assert ended.detail["reason"] == "remoteEnded" and ended.detail["was"] == "connected"
    pushes = [e.detail["type"] for e in bob.events("push.received", call_id=call_id)]
    assert pushes == ["call.incoming", "call.ended"]
    assert not bob.events("callkit.reported", call_id=call_id, placeholder=True)


async def test_woken_phone_rings_reports_ringing_and_auto_answers(world: World) -> None:
    alice = await world.phone("alice", "a-phone", app_open=True, name="Alice A.")
    bob = await world.phone("bob", "b-phone", policy=Policy.answer(after=0.2))
    call_id = await alice.call("bob")

    await bob.wait_for("callkit.connected", call_id=call_id)
    await alice.wait_for("callkit.connected", call_id=call_id)
    [reported] = bob.events("callkit.reported", call_id=call_id)
    assert reported.detail == {"caller": "Alice A.", "source": "push"}
    [status] = bob.events("status.checked", call_id=call_id)
    assert status.detail["state"] == "ringing" and status.detail["end_call"] is False
    sent = [e.detail["type"] for e in bob.events("ws.sent", call_id=call_id)]
    assert sent == ["call.ringing", "call.answer"]
    ringback = await alice.wait_for("callkit.ringback", call_id=call_id)
    assert ringback.detail["ringing"] == "b-phone"
    assert bob.calls[call_id].phase == "connected"

    await alice.hang_up(call_id)
    ended = await bob.wait_for("callkit.ended", call_id=call_id)
    assert ended.detail["reason"] == "remoteEnded" and ended.detail["was"] == "connected"


async def test_second_device_ends_with_answered_elsewhere(world: World) -> None:
    alice = await world.phone("alice", "a-phone", app_open=True)
    phone = await world.phone("bob", "b-phone", policy=Policy.answer(after=0.3))
    ipad = await world.phone("bob", "b-ipad")
    call_id = await alice.call("bob")

    ended = await ipad.wait_for("callkit.ended", call_id=call_id)
    assert ended.detail["reason"] == "answeredElsewhere"
    await phone.wait_for("callkit.connected", call_id=call_id)
    assert ipad.events("ws.sent", call_id=call_id, type="call.ringing")


async def test_decline_policy_declines_and_the_caller_hears_it(world: World) -> None:
    alice = await world.phone("alice", "a-phone", app_open=True)
    bob = await world.phone("bob", "b-phone", policy=Policy.decline(after=0.1))
    call_id = await alice.call("bob")

    ended = await alice.wait_for("callkit.ended", call_id=call_id)
    assert ended.detail["reason"] == "remoteEnded"
    assert bob.calls[call_id].ended_by_user and bob.calls[call_id].phase == "ended"
    assert [e.detail["type"] for e in bob.events("ws.sent", call_id=call_id)] == ["call.ringing", "call.decline"]


async def test_foreground_app_dedupes_the_frame_and_the_push(world: World) -> None:
    alice = await world.phone("alice", "a-phone", app_open=True)
    bob = await world.phone("bob", "b-phone", app_open=True)
    call_id = await alice.call("bob")
    await bob.wait_for("push.received", call_id=call_id)
    await until(lambda: bool(bob.events("ws.received", call_id=call_id, type="call.incoming")))
    # Whichever came second, the push or the frame, rang nothing new.
    assert len(bob.events("callkit.reported", call_id=call_id)) == 1
    assert len(bob.events("callkit.duplicate", call_id=call_id) + bob.events("ws.duplicate", call_id=call_id)) == 1
    await alice.hang_up(call_id)
    ended = await bob.wait_for("callkit.ended", call_id=call_id)
    assert ended.detail["reason"] == "remoteEnded"


async def test_ring_timeout_ends_the_call_as_unanswered(
    node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    world = await make_world(node_factory, apns, ring_timeout=0.5)
    try:
        alice = await world.phone("alice", "a-phone", app_open=True)
        bob = await world.phone("bob", "b-phone")
        call_id = await alice.call("bob")
        ended = await bob.wait_for("callkit.ended", call_id=call_id)
        assert ended.detail["reason"] == "unanswered"
        caller_end = await alice.wait_for("callkit.ended", call_id=call_id)
        assert caller_end.detail["reason"] == "unanswered"
    finally:
        await world.close()


@pytest.mark.interop
async def test_demo_runs_the_readme_story() -> None:
    env = dict(os.environ)  # REDIS_URL, if the tests have one; else the demo starts its own
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voip",
        "demo",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 40)
    elapsed = time.monotonic() - started
    text = output.decode()
    assert process.returncode == 0, text
    assert elapsed < 20, f"the demo took {elapsed:.1f}s"
    for line in (
        "the cancellation displaced the stored invite",
        "PushKit: VoIP push call.cancelled",
        "Bob's phone received the cancellation, not the invite: no ghost call",
        "LATE: past its apns-expiration",
        "GET status_url -> 200 state=cancelled end_call=true reason=remote_ended",
        "reportCall(endedAt:reason: .remoteEnded)",
        "reportCall(endedAt:reason: .answeredElsewhere)",
        "FCM: data message call.cancelled",
        "the cancellation displaced the stored invite (same collapse_key: the call id)",
        "Carol's phone woke to the cancellation and showed nothing: no ghost call",
        "online, Carol's phone asked status_url, rang and answered",
        "done: 4 scenarios, no ghost call",
    ):
        assert line in text, f"{line!r} missing from:\n{text}"
