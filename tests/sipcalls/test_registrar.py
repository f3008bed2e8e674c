"""REGISTER with digest; a registered SIP phone is one of its user's devices."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apnsim import APNsSimulator
from tests.conftest import BUNDLE
from tests.conftest import register as register_app_device
from tests.ports import free_port
from tests.sipcalls.conftest import (
    SipNodeFactory,
    finished,
    messages_log,
    scenario,
    sip_port,
    start_sipp,
    wait_bound,
)
from tests.sipcalls.uac import build, register, send, sip_client

pytestmark = pytest.mark.interop

TOKEN = "ab" * 32


async def registered_sipp_phone(
    node_port: int, tmp_path: Path, *extra: str
) -> tuple[int, asyncio.Task[tuple[int, str]]]:
    """A sipp UAS waiting for one call, and its Contact registered as alice's phone."""
    phone_port = free_port()
    phone = start_sipp(["-sn", "uas", "-p", str(phone_port), "-m", "1", *extra], tmp_path / "phone")
    await wait_bound(phone_port, phone)
    registrar = start_sipp(
        [
            f"127.0.0.1:{node_port}",
            "-sf",
            scenario("register_contact.xml"),
            "-s",
            "alice",
            "-au",
            "alice",
            "-ap",
            "wonderland",
            "-key",
            "contact_port",
            str(phone_port),
            "-m",
            "1",
            "-p",
            "0",
        ],
        tmp_path / "register",
    )
    await finished(registrar)
    return phone_port, phone


async def test_app_call_reaches_the_registered_sipp_phone(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    phone_port, phone = await registered_sipp_phone(sip_port(node), tmp_path)
    stores = node.node.stores
    devices, online = await stores.devices.reachable("alice")
    (device_id,) = online
    assert device_id.startswith("sip-reg-") and not devices  # a plain phone: present, no push record
    bindings = await node.node.sip.registrar.bindings("alice")  # type: ignore[union-attr]
    assert bindings[device_id].contact == f"sip:alice@127.0.0.1:{phone_port}"

    bob = await node.device("bob", "bob-phone")
    started = await bob.request({"type": "call.start", "callee": "alice"})
    call_id = started["call_id"]
    await bob.expect("call.ringing", timeout=10, call_id=call_id)
    answered = await bob.expect("call.answered", timeout=10, call_id=call_id)
    assert answered["device_id"] == device_id and "m=audio" in answered["sdp"]
    await bob.request({"type": "call.hangup", "call_id": call_id})
    await finished(phone)  # 180, 200, ACK, our BYE


async def test_sip_peer_call_forks_to_the_registered_phone(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    """SIP to SIP through the app side: sipp peer -> alice -> alice's registered sipp phone,
    whose answer SDP goes back to the peer; the peer hangs up."""
    node = await sip_node()
    media_port = free_port()
    _, phone = await registered_sipp_phone(sip_port(node), tmp_path, "-mp", str(media_port))
    peer = start_sipp(
        [
            f"127.0.0.1:{sip_port(node)}",
            "-sf",
            scenario("peer_calls_app_answers.xml"),
            "-s",
            "alice",
            "-m",
            "1",
            "-p",
            "0",
        ],
        tmp_path / "peer",
    )
    output = await finished(peer)
    await finished(phone)
    assert "m=audio 49170" in messages_log(tmp_path / "phone")  # the peer's offer reached the phone
    assert f"m=audio {media_port} RTP/AVP 0" in messages_log(tmp_path / "peer")  # and its answer, the peer
    assert "200 OK" in output
    await asyncio.sleep(0.2)
    assert not node.node.sip.legs  # type: ignore[union-attr]


async def test_fork_rings_app_devices_and_phone_first_answer_wins(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    phone_port = free_port()
    phone = start_sipp(
        ["-sf", scenario("uas_rings_until_cancel.xml"), "-p", str(phone_port), "-m", "1"], tmp_path / "phone"
    )
    await wait_bound(phone_port, phone)
    async with sip_client() as client:
        ok = await register(client, sip_port(node), "alice", "wonderland", f"<sip:alice@127.0.0.1:{phone_port}>")
        assert ok.status == 200
    alice = await node.device("alice", "alice-app")
    bob = await node.device("bob", "bob-phone")
    started = await bob.request({"type": "call.start", "callee": "alice"})
    call_id = started["call_id"]
    await alice.expect("call.incoming", call_id=call_id)
    await bob.expect("call.ringing", timeout=10, call_id=call_id)  # the phone's 180
    await alice.request({"type": "call.answer", "call_id": call_id, "sdp": "v=0\r\n"})
    await finished(phone)  # answered elsewhere: CANCEL, 487, ACK


async def test_push_parameters_make_a_device_record(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    stores = node.node.stores
    contact = (
        f"<sip:alice@127.0.0.1:5999;pn-provider=apns.dev;pn-prid={TOKEN}"
        ';pn-param=ABCDE12345.com.example.caller.voip>;+sip.instance="<urn:uuid:1>"'
    )
    async with sip_client() as client:
        ok = await register(client, sip_port(node), "alice", "wonderland", contact)
        assert ok.status == 200 and "expires=" in str(ok.headers.get("Contact"))
        devices = await stores.devices.registered("alice")
        ((device_id, record),) = devices.items()
        assert record["voip_token"] == TOKEN
        assert record["apns_environment"] == "sandbox"
        assert record["bundle_id"] == "com.example.caller"
        assert record["sip"]["team_id"] == "ABCDE12345"
        # A refresh with a new token keeps the same device (the instance id).
        new_token = "cd" * 32
        again = await register(
            client, sip_port(node), "alice", "wonderland", contact.replace(TOKEN, new_token).replace("apns.dev", "apns")
        )
        assert again.status == 200
        devices = await stores.devices.registered("alice")
        assert list(devices) == [device_id]
        assert devices[device_id]["voip_token"] == new_token
        assert devices[device_id]["apns_environment"] == "production"
        # Unregistering logs the phone out: no binding, no presence, no push record.
        gone = await register(client, sip_port(node), "alice", "wonderland", contact, expires=0)
        assert gone.status == 200 and gone.headers.get("Contact") is None
    devices, online = await stores.devices.reachable("alice")
    assert not devices and not online


async def test_push_parameters_for_an_app_without_apns_credentials_are_555(
    sip_node: SipNodeFactory, apns: tuple[APNsSimulator, dict[str, str]]
) -> None:
    """With APNs credentials for one app only (issue 14, item 6), a phone that asks for pushes
    to another app is refused (RFC 8599: 555), as PUT /v1/devices answers 422 unknown_app."""
    node = await sip_node(**apns[1])
    contact = (
        f"<sip:alice@127.0.0.1:5999;pn-provider=apns;pn-prid={TOKEN}"
        ';pn-param=ABCDE12345.com.example.other.voip>;+sip.instance="<urn:uuid:2>"'
    )
    async with sip_client() as client:
        refused = await register(client, sip_port(node), "alice", "wonderland", contact)
        assert (refused.status, refused.reason) == (555, "Push Notification Service Not Supported")
        assert await node.node.stores.devices.registered("alice") == {}
        served = contact.replace("com.example.other", BUNDLE)
        assert (await register(client, sip_port(node), "alice", "wonderland", served)).status == 200
        [record] = (await node.node.stores.devices.registered("alice")).values()
        assert record["bundle_id"] == BUNDLE


async def test_register_refusals(sip_node: SipNodeFactory) -> None:
    node = await sip_node()
    port = sip_port(node)
    async with sip_client() as client:
        wrong = await register(client, port, "alice", "not-the-password", "<sip:alice@127.0.0.1:5998>")
        assert wrong.status == 401
        brief = await register(client, port, "alice", "wonderland", "<sip:alice@127.0.0.1:5998>", expires=5)
        assert brief.status == 423 and brief.headers.get("Min-Expires") == "60"
        # carol may not register alice's address
        as_carol = build(
            "REGISTER", "sip:voip.test", user="carol", to="sip:alice@voip.test", contact="<sip:alice@127.0.0.1:5998>"
        )
        challenge = await send(client, port, as_carol)
        from sip.digest import authorize

        refused = await send(client, port, authorize(as_carol, challenge, "carol", "looking-glass"))
        assert refused.status == 403
    assert not (await node.node.stores.devices.reachable("alice"))[1]


async def test_password_stored_as_ha1_in_redis(sip_node: SipNodeFactory) -> None:
    node = await sip_node(sip_accounts={})
    registrar = node.node.sip.registrar  # type: ignore[union-attr]
    await registrar.store_password("dave", "secret-dave")
    stored = await node.node.connections.client.hgetall(node.node.stores.keys.sip_ha1("dave"))
    assert stored and all(b"secret-dave" not in v for v in stored.values())
    async with sip_client() as client:
        ok = await register(client, sip_port(node), "dave", "secret-dave", "<sip:dave@127.0.0.1:5997>")
        assert ok.status == 200


async def test_app_device_counts_and_unknown_users_do_not(sip_node: SipNodeFactory) -> None:
    """A user with a registered app device (offline) is not a 404: the call rings by push."""
    node = await sip_node()
    await register_app_device(node, "erin", "erin-phone")
    async with sip_client() as client:
        invite = build("INVITE", "sip:erin@voip.test", contact=str(client.contact()))
        tx = client.send_request(invite, ("127.0.0.1", sip_port(node)), "UDP")
        await asyncio.sleep(0.5)
        assert not tx.done  # ringing the offline device, by push
        tx.cancel()
        assert (await tx).status == 487
        nobody = await send(client, sip_port(node), build("INVITE", "sip:nobody@voip.test"))
        assert nobody.status == 404
