"""A second platform is a new notifier class: `CallPushes` drives any `Notifier` through
platform-neutral pushes and verdicts, with a real node and real Redis around it."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import RunningNode, register
from voip.node import NodeParts
from voip.push import Environment, Outcome, Push, PushKind, PushResult, PushType, TokenDrop


class Pager:
    """A platform of its own: addresses devices by their VoIP token, and says a token it
    does not know is no good."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.sent: asyncio.Queue[Push] = asyncio.Queue()

    def address(self, device: dict[str, Any], kind: PushKind) -> dict[str, Any] | None:
        if kind is PushKind.MISSED_ALERT or not device.get("voip_token"):
            return None
        return {"pager": device["voip_token"]}

    async def notify(self, push: Push) -> PushResult:
        await self.sent.put(push)
        known = push.address["pager"] in self.known
        return PushResult(
            apns_id=f"pager-{self.sent.qsize()}",
            device_token=push.address["pager"],
            environment=Environment.PRODUCTION,
            push_type=PushType.VOIP,
            outcome=Outcome.ACCEPTED if known else Outcome.REJECTED,
            status=200 if known else 404,
            reason=None if known else "NoSuchPager",
            timestamp=None,
            latency_ms=1.0,
            attempts=1,
            drop_token=None if known else TokenDrop(registered_before=None),
        )

    async def aclose(self) -> None:
        pass


async def next_push(pager: Pager) -> Push:
    return await asyncio.wait_for(pager.sent.get(), 5)


async def test_call_pushes_drive_another_platform_unchanged(node_factory: Any) -> None:
    phone_token, stale_token = "aa" * 32, "bb" * 32
    pager = Pager(known={phone_token})
    node: RunningNode = await node_factory(parts=NodeParts(notifier=pager))
    # The node was built around the pager: no APNs of any kind.
    assert node.node.apns_simulator is None and "apns" not in node.node.readiness_checks
    await register(node, "bob", "b-phone", voip_token=phone_token)
    await register(node, "bob", "b-pager", voip_token=stale_token)
    ipad = await node.device("bob", "b-ipad")  # connected, no token: told over its socket
    caller = await node.device("alice", "a1", name="Alice")  # the token's claim: the shown name
    started = await caller.request({"type": "call.start", "callee": "bob"})
    call_id = started["call_id"]

    invites = {}
    for _ in range(2):
        push = await next_push(pager)
        invites[push.address["pager"]] = push
    assert set(invites) == {phone_token, stale_token}
    invite = invites[phone_token]
    assert (invite.kind, invite.call_id, invite.deadline) == (PushKind.INVITE, call_id, started["ring_deadline"] / 1000)
    assert invite.caller is not None and invite.caller.display_name == "Alice"
    assert invite.status_url is not None
    status = (await node.http().get(invite.status_url)).json()
    assert (status["state"], status["end_call"]) == ("ringing", False)

    # The platform called the pager's token no good: dropped, as an APNs BadDeviceToken is.
    for _ in range(250):
        record = await node.node.stores.devices.get("bob", "b-pager")
        if record is not None and record["voip_token"] is None:
            break
        await asyncio.sleep(0.02)
    assert record is not None and record["voip_token"] is None

    timeline = await node.node.stores.calls.timeline(call_id)
    assert any(e["event"] == "token" and e["device"] == "b-pager" and e["dropped"] for e in timeline)

    await ipad.request({"type": "call.decline", "call_id": call_id})
    # The cancellation goes where its invite went, with the status endpoint's reason; none
    # to the pager, whose invite the platform refused: nothing is held there to cancel.
    cancel = await next_push(pager)
    assert (cancel.kind, cancel.address, cancel.reason) == (PushKind.CANCEL, invite.address, "declined_elsewhere")
    assert await node.node.pushes.wait(5) == 0
    assert pager.sent.empty()
    kinds = [
        (e["kind"], e["device"], e["outcome"])
        for e in await node.node.stores.calls.timeline(call_id)
        if e["event"] == "push"
    ]
    assert sorted(kinds) == [
        ("cancel", "b-phone", "accepted"),
        ("invite", "b-pager", "rejected"),
        ("invite", "b-phone", "accepted"),
    ]
