"""What goes on the wire: headers and every payload field, as apnsim records them."""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

from apnsim import APNsSimulator
from tests.push.conftest import ALICE, BUNDLE_ID, VOIP_TOPIC, invite, requests_for
from voip.call_pushes import HANG_UP_LIFETIME, MISSED_ALERT_RETRY_WINDOW
from voip.push import (
    APNsNotifier,
    Caller,
    Outcome,
    Push,
    PushKind,
    PushType,
    call_cancellation,
    call_ended,
    missed_call_alert,
    voip_invite,
)


async def test_invite_headers_and_payload(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    now = time.time()
    ring_deadline = now + 30.5
    request = voip_invite(
        bundle_id=BUNDLE_ID,
        device_token=device.token,
        environment="sandbox",
        call_id="call-123",
        caller=ALICE,
        ring_deadline=ring_deadline,
        status_url="https://voip.example.com/v1/calls/call-123/status?cap=abc",
        now=now,
    )

    result = await notifier.send(request)

    assert result.outcome == Outcome.ACCEPTED and result.status == 200
    assert result.apns_id == request.apns_id and uuid.UUID(result.apns_id)
    assert result.attempts == 1 and result.latency_ms > 0
    [record] = requests_for(sim, request.apns_id)
    assert record.method == "POST" and record.path == f"/3/device/{device.token}"
    assert record.header("apns-push-type") == "voip"
    assert record.header("apns-topic") == VOIP_TOPIC
    assert record.header("apns-priority") == "10"
    assert record.header("apns-expiration") == str(math.ceil(ring_deadline))  # never before the ring ends
    assert record.header("apns-collapse-id") == "call-123"
    assert record.header("apns-id") == request.apns_id
    assert record.payload == {
        "type": "call.incoming",
        "call_id": "call-123",
        "caller": {"id": "u-alice", "display_name": "Alice"},
        "sent_at": int(now * 1000),
        "expires_at": int(ring_deadline * 1000),
        "status_url": "https://voip.example.com/v1/calls/call-123/status?cap=abc",
    }
    [delivery] = device.inbox
    assert delivery.push.apns_id == request.apns_id


async def test_header_blocks_index_what_repeats_and_nothing_unique(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    """The headers every push repeats, the provider token too, enter the HPACK table once
    and are then one byte each; the values unique to a push never enter it (they would
    evict the repeating ones) and go as plain literals, not Huffman-coded."""
    device = sim.add_device(VOIP_TOPIC)
    first, second = invite(device), invite(device)
    for request in (first, second):
        assert (await notifier.send(request)).outcome == Outcome.ACCEPTED
        [record] = requests_for(sim, request.apns_id)
        assert record.path == f"/3/device/{device.token}" and record.header("apns-id") == request.apns_id

    [connection] = notifier.sender("sandbox").connections
    encoder = connection.conn.encoder
    table = dict(encoder.header_table.dynamic_entries)
    assert table[b"authorization"].startswith(b"bearer ") and table[b"apns-topic"] == VOIP_TOPIC.encode()
    unique_names = {b":path", b"apns-id", b"apns-collapse-id", b"apns-expiration"}
    assert not unique_names & table.keys()
    assert notifier.tokens is not None
    headers = [*notifier.sender("sandbox").headers(second), (b"authorization", notifier.tokens.header().encode())]
    block = encoder.encode(headers)
    unique = [value for name, value in headers if name in unique_names]
    assert all(value in block for value in unique)  # as they are: no Huffman coding
    # The unique values, the three names of theirs outside HPACK's static table, and a
    # byte or two per header: no room for the ~200-byte token.
    assert len(block) <= sum(map(len, unique)) + len(b"apns-idapns-expirationapns-collapse-id") + 2 * len(headers)


async def test_cancellation_replaces_a_stored_invite(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC, online=False)
    ring_deadline = time.time() + 30
    offer = invite(device, call_id="call-7", ttl=30)
    cancel = call_cancellation(
        bundle_id=BUNDLE_ID,
        device_token=device.token,
        environment="sandbox",
        call_id="call-7",
        reason="caller_hangup",
        ring_deadline=ring_deadline,
        now=1_700_000_000.25,
    )

    assert (await notifier.send(offer)).outcome == Outcome.ACCEPTED
    assert (await notifier.send(cancel)).outcome == Outcome.ACCEPTED

    [record] = requests_for(sim, cancel.apns_id)
    assert record.header("apns-push-type") == "voip"
    assert record.header("apns-topic") == VOIP_TOPIC
    assert record.header("apns-collapse-id") == "call-7"
    assert record.header("apns-expiration") == str(math.ceil(ring_deadline))  # never before the ring ends
    assert record.payload == {
        "type": "call.cancelled",
        "call_id": "call-7",
        "reason": "caller_hangup",
        "sent_at": 1_700_000_000_250,
    }
    delivery = device.go_online()
    assert delivery is not None and delivery.push.apns_id == cancel.apns_id
    assert [d.cause for d in device.dropped] == ["displaced"]


async def test_hang_up_push_has_the_cancellation_shape_and_lives_30_s(
    notifier: APNsNotifier, sim: APNsSimulator
) -> None:
    device = sim.add_device(VOIP_TOPIC)
    now = time.time()
    # What a call's hang-up is, in no platform's terms; the notifier makes it an APNs request.
    address = notifier.address({"voip_token": device.token, "apns_environment": "sandbox"}, PushKind.ENDED)
    assert address is not None
    request = notifier.request(
        Push(PushKind.ENDED, "call-9", address, deadline=now + HANG_UP_LIFETIME, reason="remote_ended"), now=now
    )

    assert (await notifier.send(request)).outcome == Outcome.ACCEPTED
    [record] = requests_for(sim, request.apns_id)
    assert record.header("apns-push-type") == "voip" and record.header("apns-topic") == VOIP_TOPIC
    assert record.header("apns-collapse-id") == "call-9" and record.header("apns-priority") == "10"
    assert record.header("apns-expiration") == str(math.ceil(now + 30))
    assert record.payload == {
        "type": "call.ended",
        "call_id": "call-9",
        "reason": "remote_ended",
        "sent_at": int(now * 1000),
    }


async def test_missed_call_alert(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(BUNDLE_ID)
    now = time.time()
    address = notifier.address(
        {
            "voip_token": "not-this-one",
            "alert_token": device.token,
            "apns_environment": "sandbox",
            "bundle_id": BUNDLE_ID,
        },
        PushKind.MISSED_ALERT,
    )
    assert address is not None
    request = notifier.request(
        Push(
            PushKind.MISSED_ALERT,
            "call-9",
            address,
            deadline=now + MISSED_ALERT_RETRY_WINDOW,
            caller=Caller("u-bob", "Bob"),
        ),
        now=now,
    )

    result = await notifier.send(request)

    assert result.outcome == Outcome.ACCEPTED and result.push_type == PushType.ALERT
    [record] = requests_for(sim, request.apns_id)
    assert record.header("apns-push-type") == "alert"
    assert record.header("apns-topic") == BUNDLE_ID
    assert record.header("apns-collapse-id") == "call-9"
    assert record.header("apns-expiration") == str(int(now) + 24 * 3600)
    assert record.payload == {
        "aps": {"alert": "Missed call from Bob", "sound": "default"},
        "type": "call.missed",
        "call_id": "call-9",
        "caller": {"id": "u-bob", "display_name": "Bob"},
        "sent_at": int(now * 1000),
    }


async def test_oversized_invite_is_refused_without_sending(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(VOIP_TOPIC)
    fits = invite(device, call_id="c-fits")
    padding = 5120 - len(fits.payload)
    at_limit = voip_invite(
        bundle_id=BUNDLE_ID,
        device_token=device.token,
        environment="sandbox",
        call_id="c-fits",
        caller=Caller("u-alice", "Alice" + "x" * padding),
        ring_deadline=time.time() + 2,
        status_url=_status_url(fits),
    )
    over = voip_invite(
        bundle_id=BUNDLE_ID,
        device_token=device.token,
        environment="sandbox",
        call_id="c-fits",
        caller=Caller("u-alice", "Alice" + "x" * (padding + 1)),
        ring_deadline=time.time() + 2,
        status_url=_status_url(fits),
    )
    assert len(at_limit.payload) == 5120 and len(over.payload) == 5121

    refused = await notifier.send(over)
    accepted = await notifier.send(at_limit)

    assert refused.outcome == Outcome.REJECTED and refused.reason == "PayloadTooLarge"
    assert refused.status is None and refused.attempts == 0
    assert refused.likely_cause and "5121" in refused.likely_cause and "5120" in refused.likely_cause
    assert requests_for(sim, over.apns_id) == []
    assert accepted.outcome == Outcome.ACCEPTED


async def test_alert_limit_is_4096(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    device = sim.add_device(BUNDLE_ID)
    request = missed_call_alert(
        bundle_id=BUNDLE_ID,
        device_token=device.token,
        environment="sandbox",
        call_id="c",
        caller=Caller("u", "B" * 2100),
        deadline=time.time() + 60,
    )

    result = await notifier.send(request)

    assert len(request.payload) > 4096 and len(request.payload) < 5120
    assert (result.outcome, result.reason, result.attempts) == (Outcome.REJECTED, "PayloadTooLarge", 0)
    assert sim.requests == []


async def test_collapse_id_over_64_bytes_is_refused_without_sending(notifier: APNsNotifier, sim: APNsSimulator) -> None:
    result = await notifier.send(invite(sim.add_device(VOIP_TOPIC), call_id="c" * 65))

    assert (result.outcome, result.reason, result.attempts) == (Outcome.REJECTED, "BadCollapseId", 0)
    assert sim.requests == []


def _status_url(request: object) -> str:
    import json

    return str(json.loads(request.payload)["status_url"])  # type: ignore[attr-defined]


async def test_a_push_becomes_the_request_the_builders_make(notifier: APNsNotifier) -> None:
    # The notifier builds every request from a platform-neutral Push: byte for byte what the
    # builders above make (the apns-id aside: only an invite's is chosen ahead, in its address),
    # each to the device's own app: the invite's address keeps its bundle for the cancellation.
    now, deadline = 1_700_000_000.25, 1_700_000_030.5
    record = {
        "voip_token": "ab" * 32,
        "alert_token": "cd" * 32,
        "apns_environment": "sandbox",
        "bundle_id": "com.example.other",
    }
    invite_at = notifier.address(record, PushKind.INVITE)
    cancel_at = notifier.address(record, PushKind.CANCEL)
    ended_at = notifier.address(record, PushKind.ENDED)
    alert_at = notifier.address(record, PushKind.MISSED_ALERT)
    assert invite_at is not None and cancel_at is not None and ended_at is not None and alert_at is not None
    bob = Caller("u-bob", "Bob")
    url = "https://voip.example.com/v1/calls/c/status?cap=x"
    pairs = [
        (
            Push(PushKind.INVITE, "c", invite_at, deadline, caller=bob, status_url=url),
            voip_invite(
                bundle_id="com.example.other",
                device_token="ab" * 32,
                environment="sandbox",
                call_id="c",
                caller=bob,
                ring_deadline=deadline,
                status_url=url,
                now=now,
                apns_id=invite_at["apns_id"],
            ),
        ),
        (
            Push(PushKind.CANCEL, "c", invite_at, deadline, reason="unanswered"),
            call_cancellation(
                bundle_id="com.example.other",
                device_token="ab" * 32,
                environment="sandbox",
                call_id="c",
                reason="unanswered",
                ring_deadline=deadline,
                now=now,
            ),
        ),
        (
            Push(PushKind.ENDED, "c", ended_at, deadline, reason="remote_ended"),
            call_ended(
                bundle_id="com.example.other",
                device_token="ab" * 32,
                environment="sandbox",
                call_id="c",
                reason="remote_ended",
                deadline=deadline,
                now=now,
            ),
        ),
        (
            Push(PushKind.MISSED_ALERT, "c", alert_at, deadline, caller=bob),
            missed_call_alert(
                bundle_id="com.example.other",
                device_token="cd" * 32,
                environment="sandbox",
                call_id="c",
                caller=bob,
                deadline=deadline,
                now=now,
            ),
        ),
    ]
    for push, expected in pairs:
        built = notifier.request(push, now=now)
        assert built == dataclasses.replace(expected, apns_id=built.apns_id), push.kind
    # A cancellation goes where its invite went, under an apns-id of its own.
    assert notifier.request(pairs[1][0], now=now).apns_id != invite_at["apns_id"]
    assert cancel_at["token"] == invite_at["token"]


async def test_a_device_without_the_token_a_push_needs_has_no_address(notifier: APNsNotifier) -> None:
    voip_only = {"voip_token": "ab" * 32, "alert_token": None, "apns_environment": "production"}
    alert_only = {"voip_token": None, "alert_token": "cd" * 32, "apns_environment": "sandbox"}
    assert notifier.address(voip_only, PushKind.MISSED_ALERT) is None
    assert all(
        notifier.address(alert_only, kind) is None for kind in (PushKind.INVITE, PushKind.CANCEL, PushKind.ENDED)
    )
    assert notifier.address(alert_only, PushKind.MISSED_ALERT) == {
        "token": "cd" * 32,
        "environment": "sandbox",
        "bundle_id": None,
    }
