"""SIP changes a call only through the controller: a SIP peer's CANCEL is the same hang-up
as an app's, a SIP callee's failure is a system action with the same events, pushes and
metrics as any other, and the gateway's background tasks end with the node, by name."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.conftest import DeviceClient, RunningNode
from tests.ports import free_port
from tests.sipcalls.conftest import SipNodeFactory, finished, scenario, sip_port, start_sipp, wait_bound
from tests.sipcalls.test_inbound import uac

pytestmark = pytest.mark.interop


def calls_total(state: str, reason: str) -> float:
    return REGISTRY.get_sample_value("voip_calls_total", {"state": state, "reason": reason}) or 0.0


async def state_entries(node: RunningNode, call_id: str) -> list[dict[str, Any]]:
    """The call's state changes, without what differs from call to call."""
    return [
        {k: v for k, v in entry.items() if k not in ("at", "device", "node")}
        for entry in await node.node.stores.calls.timeline(call_id)
        if entry["event"] == "state"
    ]


def transitions(logs: list[dict[str, Any]], call_id: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in e.items() if k not in ("call_id", "device", "timestamp")}
        for e in logs
        if e["event"] == "call.transition" and e.get("call_id") == call_id
    ]


async def cancelled_frames(devices: list[DeviceClient], call_id: str) -> list[dict[str, Any]]:
    frames = [await d.expect("call.cancelled", timeout=10, call_id=call_id) for d in devices]
    return [{k: v for k, v in f.items() if k not in ("call_id", "ended_at")} for f in frames]


async def test_a_sip_cancel_is_the_same_hang_up_as_an_apps(sip_node: SipNodeFactory, tmp_path: Path) -> None:
    node = await sip_node()
    phone = await node.device("alice", "alice-phone")
    tablet = await node.device("alice", "alice-tablet")
    bob = await node.device("bob", "bob-phone")
    before = calls_total("cancelled", "remote_ended")

    with capture_logs() as logs:
        sipp = start_sipp(uac(sip_port(node), "peer_cancels.xml"), tmp_path)
        by_sip = (await phone.expect("call.incoming", timeout=10))["call_id"]
        await tablet.expect("call.incoming", call_id=by_sip)
        await phone.request({"type": "call.ringing", "call_id": by_sip})  # sipp waits for a 180
        sip_frames = await cancelled_frames([phone, tablet], by_sip)
        await finished(sipp)

        by_app = (await bob.request({"type": "call.start", "callee": "alice"}))["call_id"]
        await phone.expect("call.incoming", call_id=by_app)
        await tablet.expect("call.incoming", call_id=by_app)
        assert (await bob.request({"type": "call.hangup", "call_id": by_app}))["state"] == "cancelled"
        app_frames = await cancelled_frames([phone, tablet], by_app)

    assert sip_frames == app_frames == [{"type": "call.cancelled", "state": "cancelled", "reason": "remote_ended"}] * 2
    assert (
        transitions(logs, by_sip)
        == transitions(logs, by_app)
        == [{"event": "call.transition", "log_level": "info", "state": "cancelled", "previous": "ringing"}]
    )
    assert (
        await state_entries(node, by_sip)
        == await state_entries(node, by_app)
        == [{"event": "state", "from": "ringing", "to": "cancelled", "action": "hangup", "party": "caller"}]
    )
    assert calls_total("cancelled", "remote_ended") == before + 2


async def test_a_sip_callees_failure_is_a_system_action_of_the_controller(
    sip_node: SipNodeFactory, tmp_path: Path
) -> None:
    node = await sip_node()
    bob = await node.device("bob", "bob-phone")
    port = free_port()
    sipp = start_sipp(["-sf", scenario("uas_not_found.xml"), "-p", str(port), "-m", "1"], tmp_path)
    await wait_bound(port, sipp)
    before = calls_total("failed", "failed")

    with capture_logs() as logs:
        call_id = (await bob.request({"type": "call.start", "callee": f"sip:service@127.0.0.1:{port}"}))["call_id"]
        failed = await bob.expect("call.failed", timeout=10, call_id=call_id)
    await finished(sipp)

    assert failed["reason"] == "failed"
    assert transitions(logs, call_id) == [
        {"event": "call.transition", "log_level": "info", "state": "failed", "previous": "ringing", "party": "system"}
    ]
    [entry] = await state_entries(node, call_id)
    assert entry["party"] == "system" and entry["action"] == "fail" and entry["to"] == "failed"
    assert (entry["note"]["sip_status"], entry["note"]["sip_reason"]) == (404, "Not Found")
    assert calls_total("failed", "failed") == before + 1


async def test_a_sip_task_still_running_at_stop_is_cancelled_and_logged_by_name(
    sip_node: SipNodeFactory, tmp_path: Path
) -> None:
    node = await sip_node()
    bob = await node.device("bob", "bob-phone")
    port = free_port()
    sipp = start_sipp(["-sf", scenario("uas_rings_until_cancel.xml"), "-p", str(port), "-m", "1"], tmp_path)
    await wait_bound(port, sipp)
    call_id = (await bob.request({"type": "call.start", "callee": f"sip:service@127.0.0.1:{port}"}))["call_id"]
    await bob.expect("call.ringing", timeout=10, call_id=call_id)
    gateway = node.node.sip
    assert gateway is not None and len(gateway.tasks) == 1  # the INVITE waits for its final answer

    with capture_logs() as logs:
        await gateway.stop()
    sipp.cancel()
    await asyncio.gather(sipp, return_exceptions=True)

    assert len(gateway.tasks) == 0
    assert [e["task"] for e in logs if e["event"] == "task.abandoned"] == [f"sip:outbound:{call_id}"]
    assert not [e for e in logs if e["event"] == "task.failed"]
