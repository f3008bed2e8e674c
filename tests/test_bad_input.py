"""Bad input over WebSocket and HTTP: every refusal has a code (or a close code), the
request id comes back, and neither the connection nor any other call is affected."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import DeviceClient, RunningNode

# A call in progress between two other devices, checked after every bad input.


async def call_in_progress(node: RunningNode) -> tuple[DeviceClient, DeviceClient, str]:
    caller = await node.device("alice", "a1")
    callee = await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await callee.expect("call.incoming", call_id=call_id)
    assert (await callee.request({"type": "call.answer", "call_id": call_id}))["type"] == "ack"
    await caller.expect("call.answered", call_id=call_id)
    await callee.expect("call.answered", call_id=call_id)
    return caller, callee, call_id


async def assert_unaffected(
    node: RunningNode, caller: DeviceClient, callee: DeviceClient, call_id: str, *, quiet: float = 0.05
) -> None:
    marker = uuid.uuid4().hex
    assert (await caller.request({"type": "call.signal", "call_id": call_id, "payload": marker}))["type"] == "ack"
    assert (await callee.expect("call.signal", call_id=call_id))["payload"] == marker
    assert (await callee.request({"type": "call.signal", "call_id": call_id, "payload": marker}))["type"] == "ack"
    assert (await caller.expect("call.signal", call_id=call_id))["payload"] == marker
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.state == "answered" and call.answered_by_device == "b1"
    if quiet:
        await caller.silent(quiet)
        await callee.silent(quiet)


async def assert_works(device: DeviceClient) -> None:
    pong = await device.request({"type": "ping"})
    assert pong["type"] == "pong"


async def reply_to(device: DeviceClient, text: str | bytes) -> dict[str, Any]:
    await device.socket.send(text)
    return await device.next()


async def closed_with(device: DeviceClient, timeout: float = 5) -> int | None:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(device.socket.recv(), timeout)
    return device.socket.close_code


@pytest.fixture
async def scene(node_factory: Any) -> tuple[RunningNode, DeviceClient, DeviceClient, DeviceClient, str]:
    # Many frames in a short time here: the rate limit has its own tests.
    node = await node_factory(ws_rate=1000, ws_burst=1000)
    caller, callee, call_id = await call_in_progress(node)
    mallory = await node.device("mallory", "m1")
    return node, mallory, caller, callee, call_id


A_UUID = "2b7e1516-28ae-4d2a-a6ab-f7158809cf4f"
DEEP = '{"type":"ping","x":' + "[" * 2000 + "]" * 2000 + "}"

# (frame text, error code, id echoed, a word the message must contain)
CASES: list[tuple[str, str, Any, str]] = [
    ("{not json", "bad_json", None, "JSON"),
    ("", "bad_json", None, "JSON"),
    ('{"type":"ping",}', "bad_json", None, "JSON"),
    (DEEP, "bad_json", None, "JSON"),
    ("[1,2,3]", "bad_message", None, "object"),
    ('[{"type":"ping","id":"q"}]', "bad_message", None, "object"),
    ("42", "bad_message", None, "object"),
    ('"ping"', "bad_message", None, "object"),
    ("null", "bad_message", None, "object"),
    ('{"id":"q1"}', "unknown_type", "q1", "type"),
    ('{"type":"call.teleport","id":"q2"}', "unknown_type", "q2", "call.teleport"),
    ('{"type":null,"id":3}', "unknown_type", 3, "type"),
    ('{"type":["ping"],"id":"q4"}', "unknown_type", "q4", "type"),
    ('{"type":{"ping":1},"id":"q5"}', "unknown_type", "q5", "type"),
    ('{"type":"call.answer","id":"q6"}', "invalid_message", "q6", "call_id"),
    ('{"type":"call.answer","call_id":"not-a-uuid","id":"q7"}', "invalid_message", "q7", "call_id"),
    ('{"type":"call.hangup","call_id":12345,"id":"q8"}', "invalid_message", "q8", "call_id"),
    ('{"type":"call.decline","call_id":"' + "a" * 100 + '","id":"q9"}', "invalid_message", "q9", "call_id"),
    ('{"type":"call.start","id":"q10"}', "invalid_message", "q10", "callee"),
    ('{"type":"call.start","callee":"bad user/name","id":"q11"}', "invalid_message", "q11", "callee"),
    ('{"type":"call.start","callee":"bob","caller_name":"","id":"q12"}', "invalid_message", "q12", "caller_name"),
    ('{"type":"call.start","callee":"bob","call_id":"nope","id":"q13"}', "invalid_message", "q13", "call_id"),
    ('{"type":"call.signal","call_id":"' + A_UUID + '","id":"q14"}', "invalid_message", "q14", "payload"),
    ('{"type":"ping","id":"q15","extra":true}', "invalid_message", "q15", "extra"),
    ('{"type":"ping","id":-1}', "invalid_message", -1, "id"),
    (
        '{"type":"call.answer","call_id":"' + A_UUID + '","sdp":' + '"' + "v" * 40000 + '"' + ',"id":"q17"}',
        "invalid_message",
        "q17",
        "sdp",
    ),
    ('{"type":"call.hangup","call_id":"' + A_UUID + '","id":"q18"}', "unknown_call", "q18", "no such call"),
]


async def test_bad_frames_get_an_error_and_nothing_else_changes(scene: Any) -> None:
    # One node for every case (a node per case costs seconds); each case is followed by
    # a request that must succeed on the same socket and by a look at the other call.
    node, mallory, caller, callee, call_id = scene
    for text, code, request_id, word in CASES:
        case = text[:80]
        reply = await reply_to(mallory, text)
        assert reply["type"] == "error" and reply["code"] == code, (case, reply)
        assert reply.get("id") == request_id, (case, reply)
        assert word.lower() in reply["message"].lower(), (case, reply)
        assert len(reply["message"]) < 300, case  # no echo of a big frame
        await assert_works(mallory)
        # Stray frames land in the backlog: the last check below would see them.
        await assert_unaffected(node, caller, callee, call_id, quiet=0)
    await assert_unaffected(node, caller, callee, call_id)
    await mallory.silent(0.05)


async def test_binary_frames_are_refused(scene: Any) -> None:
    node, mallory, caller, callee, call_id = scene
    for data in (b"", b'{"type":"ping","id":"b1"}', bytes(range(256))):
        reply = await reply_to(mallory, data)
        assert (reply["type"], reply["code"]) == ("error", "bad_frame")
    await assert_works(mallory)
    await assert_unaffected(node, caller, callee, call_id)


async def test_someone_elses_call_is_an_unknown_call(scene: Any) -> None:
    node, mallory, caller, callee, call_id = scene

    async def written(call: str) -> list[dict[str, Any]]:
        # What requests wrote: deliveries to the parties' sockets land on their own time.
        return [e for e in await node.node.stores.calls.timeline(call) if e["event"] != "delivered"]

    before = await written(call_id)
    # A ringing call as well as the answered one.
    ringing_caller = await node.device("carol", "c1")
    await node.device("dave", "d1")
    ringing = (await ringing_caller.request({"type": "call.start", "callee": "dave"}))["call_id"]
    ringing_before = await written(ringing)
    for action in ("call.answer", "call.decline", "call.hangup", "call.ringing", "call.signal"):
        extra = {"payload": {"ice": "x"}} if action == "call.signal" else {}
        replies = []
        for target in (call_id, call_id.upper(), ringing, str(uuid.uuid4())):
            reply = await mallory.request({"type": action, "call_id": target, **extra})
            assert reply["type"] == "error" and reply["code"] == "unknown_call", (action, reply)
            assert reply["call_id"] == target.lower()
            replies.append({k: v for k, v in reply.items() if k not in ("id", "call_id")})
        # Someone else's call and a call that does not exist read the same.
        assert all(r == replies[-1] for r in replies), (action, replies)
    assert await written(call_id) == before
    assert await written(ringing) == ringing_before
    assert (await node.node.stores.calls.get(ringing)).state == "ringing"  # type: ignore[union-attr]
    await assert_works(mallory)
    await assert_unaffected(node, caller, callee, call_id)


async def test_errors_do_not_disturb_the_same_devices_own_call(scene: Any) -> None:
    # Bad frames on a socket that is itself in a call leave that call alone.
    node, _mallory, caller, callee, call_id = scene
    for text, *_ in CASES[:12]:
        await caller.socket.send(text)
        assert (await caller.next())["type"] == "error"
    await assert_unaffected(node, caller, callee, call_id)


async def test_oversize_text_frame_closes_1009(node_factory: Any) -> None:
    node = await node_factory(ws_max_frame_bytes=1024)
    caller, callee, call_id = await call_in_progress(node)
    device = await node.device("mallory", "m1")
    # At the limit: parsed like any other frame.
    at_limit = '{"type":"ping","id":"' + "x" * (1024 - 23) + '"}'
    assert len(at_limit.encode()) == 1024
    assert (await reply_to(device, at_limit))["code"] == "invalid_message"
    await device.socket.send('{"type":"ping","pad":"' + "x" * 1024 + '"}')
    assert await closed_with(device) == 1009
    # Multi-byte characters count as bytes: 600 characters, 1200 bytes.
    other = await node.device("mallory", "m2")
    await other.socket.send('{"type":"ping","pad":"' + "é" * 600 + '"}')
    assert await closed_with(other) == 1009
    await assert_unaffected(node, caller, callee, call_id)
    assert await node.node.connections.client.hget(node.node.stores.keys.presence("mallory"), "m1") is None


async def test_oversize_binary_frame_closes_1009(node_factory: Any) -> None:
    node = await node_factory(ws_max_frame_bytes=1024)
    caller, callee, call_id = await call_in_progress(node)
    device = await node.device("mallory", "m1")
    await device.socket.send(b"\x00" * 1025)
    assert await closed_with(device) == 1009
    await assert_unaffected(node, caller, callee, call_id)


async def test_a_flood_is_rate_limited_then_closed_1008(node_factory: Any) -> None:
    node = await node_factory(ws_rate=1, ws_burst=3)
    caller, callee, call_id = await call_in_progress(node)
    device = await node.device("mallory", "m1")
    for i in range(20):
        await device.socket.send(orjson.dumps({"type": "ping", "id": f"f{i}"}).decode())
    frames: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(orjson.loads(await asyncio.wait_for(device.socket.recv(), 5)))
    assert device.socket.close_code == 1008
    assert [f["type"] for f in frames[:3]] == ["pong"] * 3
    limited = frames[3:]
    assert limited and all(f["type"] == "error" and f["code"] == "rate_limited" for f in limited), frames
    assert len(limited) <= 3
    # Each refusal says which request it refused, so the app can retry that one.
    assert [f.get("id") for f in limited] == [f"f{i}" for i in range(3, 3 + len(limited))]
    await assert_unaffected(node, caller, callee, call_id)


async def test_a_short_burst_over_the_limit_recovers(node_factory: Any) -> None:
    node = await node_factory(ws_rate=20, ws_burst=3)
    device = await node.device("mallory", "m1")
    for i in range(4):
        await device.socket.send(orjson.dumps({"type": "ping", "id": i}).decode())
    frames = [await device.next() for _ in range(4)]
    assert [f["type"] for f in frames] == ["pong", "pong", "pong", "error"]
    assert frames[3]["code"] == "rate_limited"
    await asyncio.sleep(0.2)  # the bucket refills
    await assert_works(device)


async def test_a_flood_of_binary_frames_is_closed_1008(node_factory: Any) -> None:
    node = await node_factory(ws_rate=1, ws_burst=3)
    caller, callee, call_id = await call_in_progress(node)
    device = await node.device("mallory", "m1")
    for _ in range(20):
        await device.socket.send(b"\x01\x02")
    assert await closed_with(device) == 1008
    await assert_unaffected(node, caller, callee, call_id)


# WebSocket authentication: refused before the socket is accepted.


async def handshake_status(node: RunningNode, query: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"{node.ws_url}{query}", additional_headers=headers or {})
    response = refused.value.response
    return response.status_code, orjson.loads(response.body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_websocket_auth_is_checked_before_accept(node: RunningNode) -> None:
    from voip.auth import Authenticator

    good = node.auth.mint("alice", "device")
    cases: list[tuple[str, dict[str, str] | None, int]] = [
        ("?device_id=d1", None, 401),
        ("?device_id=d1", bearer("not-a-token"), 401),
        ("?device_id=d1", {"Authorization": f"Basic {good}"}, 401),
        ("?device_id=d1", {"Authorization": "Bearer"}, 401),
        ("?device_id=d1", bearer(node.auth.mint("alice", "device", ttl=-30)), 401),
        ("?device_id=d1", bearer(Authenticator("some-other-secret-" + "o" * 32).mint("alice")), 401),
        ("?device_id=d1&access_token=garbage", None, 401),
        ("?device_id=d1", bearer(node.auth.mint("alice", "operator")), 403),
        (f"?device_id=d1&access_token={node.auth.mint('alice', 'operator')}", None, 403),
        ("", bearer(good), 400),
        ("?device_id=", bearer(good), 400),
        ("?device_id=bad%20id", bearer(good), 400),
        ("?device_id=a/b", bearer(good), 400),
        ("?device_id=" + "d" * 65, bearer(good), 400),
        # Authentication comes first: a stranger learns nothing about the device_id rules.
        ("?device_id=bad%20id", None, 401),
        # The header wins over the query parameter.
        (f"?device_id=d1&access_token={good}", bearer("not-a-token"), 401),
    ]
    for query, headers, status in cases:
        got, body = await handshake_status(node, query, headers)
        assert got == status, (query, headers, body)
        assert isinstance(body.get("error"), str) and body["error"]
    assert await node.node.connections.client.hgetall(node.node.stores.keys.presence("alice")) == {}
    # The same device with good credentials gets in, by header or by query parameter.
    await node.device("alice", "d1")
    socket = await websockets.connect(f"{node.ws_url}?device_id=d2&access_token={good}")
    assert orjson.loads(await socket.recv())["type"] == "hello"
    await socket.close()
    socket = await websockets.connect(
        f"{node.ws_url}?device_id=d3&access_token=garbage", additional_headers=bearer(good)
    )
    assert orjson.loads(await socket.recv())["type"] == "hello"
    await socket.close()


# HTTP


def auth_header(node: RunningNode, user: str = "alice", role: str = "device", ttl: float = 3600) -> dict[str, str]:
    return bearer(node.auth.mint(user, role, ttl=ttl))  # type: ignore[arg-type]


GOOD_TOKEN = "ab" * 32


BAD_BODIES: list[tuple[bytes, str | None]] = [
    (b"{not json", "body"),
    (b"[]", "body"),
    (b"null", "body"),
    (b'"a string"', "body"),
    (b'{"voip_token": 123}', "voip_token"),
    (b'{"voip_token": ["ab"]}', "voip_token"),
    (b'{"voip_token": "' + b"zz" * 32 + b'"}', "voip_token"),
    (b'{"voip_token": "' + b"ab" * 31 + b'"}', "voip_token"),
    (b'{"voip_token": "' + b"a" * 65 + b'"}', "voip_token"),
    (b'{"voip_token": "' + b"ab" * 101 + b'"}', "voip_token"),
    (b'{"voip_token": " ' + b"ab" * 32 + b'"}', "voip_token"),
    (b'{"alert_token": "xyz"}', "alert_token"),
    (b'{"apns_environment": "staging"}', "apns_environment"),
    (b'{"apns_environment": 1}', "apns_environment"),
    (b'{"bundle_id": "com example app"}', "bundle_id"),
    (b'{"bundle_id": ""}', "bundle_id"),
    (b'{"voip_token": "' + GOOD_TOKEN.encode() + b'", "colour": "red"}', "colour"),
]


async def test_put_device_with_a_bad_body_is_422_naming_the_field(node: RunningNode) -> None:
    client = node.http()
    for body, field in BAD_BODIES:
        response = await client.put("/v1/devices/d1", content=body, headers=auth_header(node))
        assert response.status_code == 422, (body[:80], response.text)
        assert response.headers["content-type"].startswith("application/json")
        payload = response.json()
        assert payload["error"] == "validation_error"
        assert field in [d["field"] for d in payload["detail"]], (body[:80], payload)
        # Nothing stored, and no existing record touched.
        assert await node.node.connections.client.exists(node.node.stores.keys.devices("alice")) == 0, body[:80]
    # The same refusals leave an existing record as it was.
    first = await client.put("/v1/devices/d1", json={"voip_token": GOOD_TOKEN}, headers=auth_header(node))
    assert first.status_code == 201
    stored = await node.node.stores.devices.get("alice", "d1")
    for body, _ in BAD_BODIES:
        response = await client.put("/v1/devices/d1", content=body, headers=auth_header(node))
        assert response.status_code == 422
    assert await node.node.stores.devices.get("alice", "d1") == stored


async def test_oversize_body_is_413(node: RunningNode) -> None:
    body = b'{"voip_token": "' + GOOD_TOKEN.encode() + b'", "bundle_id": "' + b"a" * 17000 + b'"}'
    response = await node.http().put("/v1/devices/d1", content=body, headers=auth_header(node))
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert await node.node.connections.client.exists(node.node.stores.keys.devices("alice")) == 0


async def test_bad_device_id_in_the_path(node: RunningNode) -> None:
    client = node.http()
    headers = auth_header(node)
    for device_id in ("d" * 65, "bad%20id", "d%21", "%C3%A9t%C3%A9", "d%00", "a%2Fb"):
        for method in ("PUT", "DELETE"):
            response = await client.request(
                method, f"/v1/devices/{device_id}", json={"voip_token": GOOD_TOKEN}, headers=headers
            )
            # a%2Fb may be routed as a/b (404); everything else reaches the check (422).
            allowed = {404, 422} if device_id == "a%2Fb" else {422}
            assert response.status_code in allowed, (method, device_id, response.text)
            body = response.json()
            if response.status_code == 422:
                assert body["error"] == "validation_error" and "device_id" in body["message"]
    assert await node.node.connections.client.exists(node.node.stores.keys.devices("alice")) == 0


async def test_device_routes_need_a_device_token(node: RunningNode) -> None:
    from voip.auth import Authenticator

    cases: list[tuple[dict[str, str], int, str]] = [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer nonsense"}, 401, "unauthorized"),
        ({"Authorization": "Token abc"}, 401, "unauthorized"),
        (auth_header(node, ttl=-30), 401, "unauthorized"),
        (bearer(Authenticator("some-other-secret-" + "o" * 32).mint("alice")), 401, "unauthorized"),
        (auth_header(node, role="operator"), 403, "forbidden"),
    ]
    client = node.http()
    # A device of alice's exists: the refused requests must neither list, change nor delete it.
    await client.put("/v1/devices/d0", json={"voip_token": GOOD_TOKEN}, headers=auth_header(node))
    stored = await node.node.stores.devices.registered("alice")
    for headers, status, error in cases:
        for method, path in (
            ("PUT", "/v1/devices/d1"),
            ("PUT", "/v1/devices/d0"),
            ("DELETE", "/v1/devices/d0"),
            ("GET", "/v1/devices"),
            ("GET", "/v1/ice-servers"),
        ):
            response = await client.request(method, path, json={"voip_token": "cd" * 32}, headers=headers)
            assert response.status_code == status, (method, path, headers, response.text)
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            assert body["error"] == error and body["message"]
            assert "devices" not in body
    assert await node.node.stores.devices.registered("alice") == stored


async def test_unknown_routes_and_wrong_methods_are_json(node: RunningNode) -> None:
    client = node.http()
    for path in ("/nope", "/v1/devices/a/b", "/v1/calls/a/b", "/v1/ws"):
        response = await client.get(path, headers=auth_header(node))
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
    for method, path in (
        ("POST", "/v1/devices"),
        ("DELETE", "/v1/devices"),
        ("POST", "/v1/devices/d1"),
        ("PUT", f"/v1/calls/{A_UUID}/status"),
        ("POST", "/v1/calls"),
        ("GET", "/v1/calls/seen"),
    ):
        response = await client.request(method, path, headers=auth_header(node))
        assert response.status_code == 405, (method, path)
        assert response.json()["error"] == "method_not_allowed"
    assert await node.node.connections.client.exists(node.node.stores.keys.devices("alice")) == 0


async def test_405_lists_every_allowed_method(node: RunningNode) -> None:
    response = await node.http().get("/v1/devices/d1")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"PUT", "DELETE"}


async def test_a_capability_with_non_ascii_or_huge_expiry_is_401_not_500(node: RunningNode) -> None:
    call_id = "6f1c1e0c-1e0b-4f60-9d6e-3a2b1c0d9e8f"
    for cap in ("99999999999.\u00e9", "9" * 5000 + ".AAAA"):
        response = await node.http().get(f"/v1/calls/{call_id}/status", params={"cap": cap, "device_id": "b1"})
        assert response.status_code == 401, (cap[:20], response.status_code, response.text)
