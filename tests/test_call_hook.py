"""The call-control hook, end to end: a real node asks a real HTTP server on loopback
before anything rings; its answer, its silence and its slowness decide."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import BUNDLE, RunningNode, register
from tests.http_receiver import Answer, HttpReceiver, Received
from tests.test_webhooks import SECRET, events_of, wait_events
from voip.calls import CallState
from voip.webhooks.signing import verify

pytestmark = pytest.mark.on_cluster_too

VOIP_TOPIC = f"{BUNDLE}.voip"


def answering(answer: dict[str, Any]) -> Any:
    def respond(request: Received) -> Answer:
        assert verify(SECRET, request.body, request.headers["voip-signature"])
        return 200, orjson.dumps(answer)

    return respond


def hook_settings(hook: HttpReceiver, **more: Any) -> dict[str, Any]:
    return {"call_hook_url": hook.url, "webhook_secret": SECRET, **more}


@pytest.fixture
async def hooked(node_factory: Any, apns: tuple[APNsSimulator, dict[str, str]]) -> Any:
    """A node with the APNs simulator, for a hook the test makes: (start(hook, **settings), sim)."""
    sim, apns_settings = apns
    receivers: list[HttpReceiver] = []

    async def start(hook: HttpReceiver, **settings: Any) -> RunningNode:
        receivers.append(await hook.start())
        node: RunningNode = await node_factory(**apns_settings, **hook_settings(hook, **settings))
        return node

    yield start, sim
    for receiver in receivers:
        await receiver.stop()


async def test_the_hook_is_asked_signed_and_its_name_and_custom_reach_the_callee_and_the_push(hooked: Any) -> None:
    start, sim = hooked
    hook = HttpReceiver(respond=answering({"action": "ring", "caller_name": "Dr. Alice", "custom": {"ticket": 7}}))
    node = await start(hook)
    iphone = sim.add_device(VOIP_TOPIC, online=True)
    await register(node, "bob", "b-phone", voip_token=iphone.token)
    bob = await node.device("bob", "b-tablet")
    alice = await node.device("alice", "a1", name="Alice")

    started = await alice.request({"type": "call.start", "callee": "bob", "custom": {"topic": "lunch"}})
    assert started["type"] == "call.started", started
    call_id = started["call_id"]
    [asked] = hook.received
    assert asked.json() == {
        "call_id": call_id,
        "caller": {"user": "alice", "device": "a1"},
        "callee": "bob",
        "source": "ws",
        "custom": {"topic": "lunch"},
    }
    incoming = await bob.expect("call.incoming", call_id=call_id)
    assert incoming["caller_name"] == "Dr. Alice" and incoming["custom"] == {"ticket": 7}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not [r for r in sim.requests if orjson.loads(r.body).get("call_id") == call_id]:
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    [push] = [r for r in sim.requests if orjson.loads(r.body).get("call_id") == call_id]
    payload = orjson.loads(push.body)
    assert payload["custom"] == {"ticket": 7}
    assert payload["caller"] == {"id": "alice", "display_name": "Dr. Alice"}


async def test_a_ring_answer_without_custom_passes_the_caller_s_custom_on(hooked: Any) -> None:
    start, _ = hooked
    node = await start(HttpReceiver(respond=answering({"action": "ring"})))
    bob = await node.device("bob", "b1")
    alice = await node.device("alice", "a1", name="Alice")
    call_id = (await alice.request({"type": "call.start", "callee": "bob", "custom": {"topic": "lunch"}}))["call_id"]
    incoming = await bob.expect("call.incoming", call_id=call_id)
    assert incoming["custom"] == {"topic": "lunch"} and incoming["caller_name"] == "Alice"


async def test_a_rejected_call_rings_nothing_pushes_nothing_and_is_recorded(hooked: Any, node_factory: Any) -> None:
    start, sim = hooked
    events = await HttpReceiver().start()
    try:
        hook = HttpReceiver(respond=answering({"action": "reject", "reason": "bob blocked you"}))
        node = await start(hook, webhook_urls=events.url)
        iphone = sim.add_device(VOIP_TOPIC, online=False)
        await register(node, "bob", "b-phone", voip_token=iphone.token)
        bob = await node.device("bob", "b-tablet")
        alice = await node.device("alice", "a1")

        reply = await alice.request({"type": "call.start", "callee": "bob"})
        assert reply["type"] == "call.error" and reply["reason"] == "call_rejected", reply
        assert reply["message"] == "bob blocked you"
        call_id = reply["call_id"]
        await bob.silent(0.3)  # no call.incoming, nothing at all
        assert sim.requests == []  # no push left for the phone
        call = await node.node.stores.calls.get(call_id)
        assert call is not None and call.state is CallState.FAILED
        recorded = await wait_events(events, call_id, 2)
        assert [e["type"] for e in recorded] == ["call.created", "call.failed"]
        assert recorded[1]["call"]["reason"] == "call_rejected"
        assert len(events_of(events, call_id)) == 2
    finally:
        await events.stop()


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_slow_hook_hits_the_timeout_and_the_failure_policy_decides(hooked: Any, policy: str) -> None:
    start, sim = hooked
    hook = HttpReceiver(respond=answering({"action": "reject"}), delay=1.0)
    node = await start(hook, call_hook_timeout_ms=150, call_hook_failure=policy)
    bob = await node.device("bob", "b1")
    alice = await node.device("alice", "a1")
    reply = await alice.request({"type": "call.start", "callee": "bob"})
    if policy == "open":
        assert reply["type"] == "call.started", reply
        await bob.expect("call.incoming", call_id=reply["call_id"])
    else:
        assert reply["type"] == "call.error" and reply["reason"] == "call_rejected", reply
        await bob.silent(0.3)
        assert sim.requests == []
    # The hook's own answer, a reject, came too late to count for either policy.
    assert hook.attempts == 1


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"not json"),
        (200, b'{"action": "maybe"}'),
        (200, orjson.dumps({"action": "ring", "custom": {"x": "y" * 2000}})),
        (500, b'{"action": "ring"}'),
    ],
    ids=["not-json", "unknown-action", "custom-too-big", "http-500"],
)
async def test_an_unusable_answer_is_no_answer_closed_refuses(hooked: Any, answer: tuple[int, bytes]) -> None:
    start, _ = hooked
    node = await start(HttpReceiver(respond=lambda _: answer))
    alice = await node.device("alice", "a1")
    reply = await alice.request({"type": "call.start", "callee": "bob"})
    assert reply["type"] == "call.error" and reply["reason"] == "call_rejected", reply


async def test_a_hook_that_is_down_follows_the_policy(node_factory: Any) -> None:
    down = await HttpReceiver().start()
    await down.stop()  # a port nobody listens on
    node = await node_factory(**hook_settings(down, call_hook_failure="open"))
    bob = await node.device("bob", "b1")
    alice = await node.device("alice", "a1")
    reply = await alice.request({"type": "call.start", "callee": "bob"})
    assert reply["type"] == "call.started"
    await bob.expect("call.incoming", call_id=reply["call_id"])


async def test_custom_is_a_json_object_of_one_kib_at_most(node: RunningNode) -> None:
    alice = await node.device("alice", "a1")
    for custom in ({"x": "y" * 1100}, [1, 2], "text"):
        reply = await alice.request({"type": "call.start", "callee": "bob", "custom": custom})
        assert reply["type"] == "error" and reply["code"] == "invalid_message", reply
        assert "custom" in reply["message"]


def test_webhooks_and_hook_need_a_secret() -> None:
    from voip.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="VOIP_WEBHOOK_SECRET"):
        load_settings(call_hook_url="http://127.0.0.1:9/hook", webhook_secret="")
    with pytest.raises(SettingsError, match="VOIP_WEBHOOK_URLS"):
        load_settings(webhook_urls="ftp://example.com/x", webhook_secret=SECRET)
