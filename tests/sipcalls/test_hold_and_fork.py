"""RFC 8599 hold-and-fork: a push-capable SIP phone whose binding lapsed ("asleep") is
woken by the call's VoIP push; its REGISTER while the call still rings forks the INVITE
to it. A call that ended before the REGISTER forks nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import RunningNode
from tests.ports import free_port
from tests.sipcalls.conftest import (
    SipNodeFactory,
    finished,
    scenario,
    sip_port,
    start_sipp,
    wait_bound,
)
from tests.test_call_pushes import VOIP_TOPIC, invites_for
from voip.clock import now_ms

pytestmark = pytest.mark.interop


@pytest.fixture
async def pushing_sip_node(
    sip_node: SipNodeFactory, apns: tuple[APNsSimulator, dict[str, str]]
) -> AsyncIterator[tuple[RunningNode, APNsSimulator]]:
    sim, settings = apns
    yield await sip_node(**settings), sim


async def register_push_phone(node: RunningNode, phone_port: int, token: str, cwd: Path) -> None:
    sipp = start_sipp(
        [
            f"127.0.0.1:{sip_port(node)}",
            "-sf",
            scenario("register_push_contact.xml"),
            "-s",
            "alice",
            "-au",
            "alice",
            "-ap",
            "wonderland",
            "-key",
            "contact_port",
            str(phone_port),
            "-key",
            "token",
            token,
            "-m",
            "1",
            "-p",
            "0",
        ],
        cwd,
    )
    await finished(sipp)


async def fall_asleep(node: RunningNode, user: str) -> str:
    """What an unrefreshed binding comes to once its expiry passes: no binding, no
    presence, the push record kept, and the registrar's own expiry having run."""
    registrar = node.node.sip.registrar  # type: ignore[union-attr]
    (device_id,) = await registrar.bindings(user)
    key = node.node.stores.keys.sip_bindings(user)
    binding = orjson.loads(await node.node.connections.client.hget(key, device_id))
    await node.node.connections.client.hset(key, device_id, orjson.dumps({**binding, "expires_at": now_ms() - 1}))
    await node.node.stores.presence.clear(user, device_id, registrar.node_id)
    await registrar._expire(user, device_id)
    devices, online = await node.node.stores.devices.reachable(user)
    assert list(devices) == [device_id] and not online
    return device_id


async def test_phone_woken_by_the_push_is_forked_into_the_ringing_call(
    pushing_sip_node: tuple[RunningNode, APNsSimulator], tmp_path: Path
) -> None:
    node, sim = pushing_sip_node
    device = sim.add_device(VOIP_TOPIC)
    phone_port = free_port()
    await register_push_phone(node, phone_port, device.token, tmp_path / "register")
    device_id = await fall_asleep(node, "alice")

    phone = start_sipp(["-sn", "uas", "-p", str(phone_port), "-m", "1"], tmp_path / "phone")
    await wait_bound(phone_port, phone)
    bob = await node.device("bob", "bob-phone")
    started = await bob.request({"type": "call.start", "callee": "alice"})
    call_id = started["call_id"]
    [push] = await invites_for(sim, call_id)
    assert orjson.loads(push.body)["call_id"] == call_id
    await asyncio.sleep(0.3)
    assert not node.node.sip.forks  # type: ignore[union-attr]  # asleep: nothing INVITEd yet

    await register_push_phone(node, phone_port, device.token, tmp_path / "woken")
    await bob.expect("call.ringing", timeout=10, call_id=call_id)
    answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
    assert answered["device_id"] == device_id and "m=audio" in answered["sdp"]
    await bob.request({"type": "call.hangup", "call_id": call_id})
    await finished(phone)  # INVITE, 180, 200, ACK, our BYE
    registrar = node.node.sip.registrar  # type: ignore[union-attr]
    assert not await node.node.connections.client.hgetall(node.node.stores.keys.sip_ringing("alice"))
    assert device_id in await registrar.bindings("alice")


async def test_call_ended_before_the_register_forks_nothing(
    pushing_sip_node: tuple[RunningNode, APNsSimulator], tmp_path: Path
) -> None:
    node, sim = pushing_sip_node
    device = sim.add_device(VOIP_TOPIC)
    phone_port = free_port()
    await register_push_phone(node, phone_port, device.token, tmp_path / "register")
    await fall_asleep(node, "alice")

    bob = await node.device("bob", "bob-phone")
    started = await bob.request({"type": "call.start", "callee": "alice"})
    call_id = started["call_id"]
    await invites_for(sim, call_id)
    await bob.request({"type": "call.hangup", "call_id": call_id})
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    assert orjson.loads(cancel.body)["call_id"] == call_id

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", phone_port))
        listener.setblocking(False)
        await register_push_phone(node, phone_port, device.token, tmp_path / "woken")
        await asyncio.sleep(1.0)
        received: list[Any] = []
        while True:
            try:
                received.append(listener.recv(65535))
            except BlockingIOError:
                break
    assert received == []  # no INVITE for a call that is over
    assert not node.node.sip.forks  # type: ignore[union-attr]
    assert not await node.node.connections.client.hgetall(node.node.stores.keys.sip_ringing("alice"))
