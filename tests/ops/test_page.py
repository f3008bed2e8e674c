"""The operators' page in headless Chromium (Debian's, driven by Playwright): a call placed
by two app devices appears ringing, turns answered then ended, and its timeline reads as
a sequence of steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Locator, Page, expect

from fcmsim import FCMSimulator, new_token
from tests.chromium import chromium, screenshot
from tests.conftest import RunningNode, register
from tests.ops.conftest import place_call
from voip.clock import now_ms

pytestmark = pytest.mark.interop


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile", viewport={"width": 1400, "height": 900}) as context:
        yield context


async def signed_in(context: BrowserContext, node: RunningNode) -> tuple[Page, list[str]]:
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(f"{node.base_url}/ops")
    await page.fill("#token", node.auth.mint("ops-alice", "operator"))
    await page.click("#login-form button")
    await expect(page.locator("#connection")).to_have_text("live")
    return page, problems


async def invite_status_url(node: RunningNode, call_id: str) -> str:
    simulator = node.node.apns_simulator
    assert simulator is not None
    record = await simulator.log.wait_for(
        lambda r: (
            isinstance(r.payload, dict)
            and r.payload.get("call_id") == call_id
            and r.payload.get("type") == "call.incoming"
        )
    )
    return str(record.payload["status_url"])


async def test_a_call_rings_is_answered_and_ends_on_the_page(node: RunningNode, browser: BrowserContext) -> None:
    page, problems = await signed_in(browser, node)
    await register(node, "bob", "b-ipad")  # offline: it hears of the call by VoIP push
    alice = await node.device("alice", "a-phone")
    bob = await node.device("bob", "b-phone")

    call_id = await place_call(alice, "bob")
    live_row = page.locator(f"#live-calls tr[data-call-id='{call_id}']")
    await expect(live_row.locator(".state")).to_have_text("ringing")
    await expect(live_row).to_contain_text("alice · a-phone")

    await bob.expect("call.incoming", call_id=call_id)
    await bob.request({"type": "call.ringing", "call_id": call_id})
    await bob.request({"type": "call.answer", "call_id": call_id})
    await expect(live_row.locator(".state")).to_have_text("answered")
    await expect(live_row).to_contain_text("bob · b-phone")

    await live_row.click()
    timeline = page.locator("#timeline .entry")
    await expect(timeline.first).to_contain_text("alice calls bob: 2 device(s) to ring (b-ipad, b-phone)")
    await expect(page.locator("#timeline .entry[data-event='state']")).to_have_count(1)
    await expect(page.locator("#timeline .entry[data-event='state']")).to_contain_text(
        "ringing → answered (answer by callee)"
    )
    await expect(page.locator("#timeline .entry[data-event='ringing']")).to_contain_text("b-phone is ringing")

    await alice.request({"type": "call.hangup", "call_id": call_id})
    recent_row = page.locator(f"#recent-calls tr[data-call-id='{call_id}']")
    await expect(recent_row.locator(".state")).to_have_text("ended")
    await expect(live_row).to_have_count(0)
    ended = page.locator("#timeline .entry[data-event='state']").nth(1)
    await expect(ended).to_contain_text("answered → ended (hangup by caller)")
    await expect(ended).to_contain_text(f"node {node.node.node_id} · device a-phone")
    await expect(page.locator("#chart-outcomes text", has_text="ended")).to_have_count(1)

    # The iPad was woken by the invite push (the APNs simulator accepts it); it asks for
    # the call's status only now, after the call ended, with the push's capability: a late
    # push, caught. A check with bob's own token is someone asking: not a late push.
    invite = page.locator("#timeline .entry[data-event='push']", has_text="(invite)")
    await expect(invite).to_contain_text("VoIP push (invite) → APNs 200 (sandbox")
    await expect(invite).to_contain_text("accepted")
    await expect(invite).to_contain_text("device b-ipad")
    await node.node.stores.calls.append_timeline(
        call_id,
        [
            {"at": now_ms(), "event": "sip_leg", "leg": "out"},
            # As an APNs 200 was recorded before it was named "accepted".
            {
                "at": now_ms(),
                "event": "push",
                "kind": "old",
                "push_type": "voip",
                "status": 200,
                "outcome": "delivered",
                "environment": "sandbox",
                "device": "b-ipad",
            },
            # An Android phone's push, as FCM answered it, and its token dropped.
            {
                "at": now_ms(),
                "event": "push",
                "kind": "cancel",
                "platform": "android",
                "message_id": None,
                "status": 404,
                "reason": "UNREGISTERED",
                "outcome": "token_invalid",
                "device": "b-pixel",
            },
            {
                "at": now_ms(),
                "event": "token",
                "device": "b-pixel",
                "dropped": True,
                "reason": "UNREGISTERED",
                "platform": "android",
            },
        ],
    )
    status = await node.http().get(
        f"/v1/calls/{call_id}/status",
        params={"device_id": "b-ipad"},
        headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"},
    )
    assert status.json()["end_call"] is True
    await expect(page.locator("#timeline .entry[data-event='sip_leg']")).to_contain_text('sip_leg: leg="out"')
    old = page.locator("#timeline .entry[data-event='push']", has_text="(old)")
    await expect(old).to_contain_text("VoIP push (old) → APNs 200 (sandbox, accepted)")
    android = page.locator("#timeline .entry[data-event='push']", has_text="b-pixel")
    await expect(android).to_contain_text("FCM data push (cancel) → FCM 404 UNREGISTERED (token_invalid)")
    dropped = page.locator("#timeline .entry[data-event='token']")
    await expect(dropped).to_contain_text("FCM token dropped after FCM said UNREGISTERED")
    bearer = page.locator("#timeline .entry[data-event='status_check']", has_text="via bearer")
    await expect(bearer).to_contain_text("status check via bearer: call was ended — told to end the call")
    await expect(bearer).not_to_have_class("late")
    status_url = await invite_status_url(node, call_id)
    assert (await node.http().get(status_url)).json()["end_call"] is True
    late = page.locator("#timeline .entry.late[data-event='status_check']")
    await expect(late).to_contain_text("status check via capability: call was ended — told to end the call")
    await expect(page.locator("#late-checks")).to_have_text("1")
    await expect(page.locator("#chart-pushes text", has_text="accepted")).to_have_count(1)

    carol = await node.device("carol", "c-phone")
    ringing = await place_call(carol, "bob")
    await expect(page.locator(f"#live-calls tr[data-call-id='{ringing}'] .state")).to_have_text("ringing")
    await expect(page.locator("#chart-outcomes text", has_text="ringing")).to_have_count(1)

    await screenshot(page, "ops", full_page=True)
    assert problems == []


async def test_a_device_token_is_refused_and_asked_again(node: RunningNode, browser: BrowserContext) -> None:
    page = await browser.new_page()
    await page.goto(f"{node.base_url}/ops")
    await page.fill("#token", node.auth.mint("bob", "device"))
    await page.click("#login-form button")
    await expect(page.locator("#login-error")).to_have_text("operator role required")
    await expect(page.locator("#board")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('voip.ops.token')") is None


async def test_the_simulator_section_shows_each_push_and_its_status_url(
    node: RunningNode, browser: BrowserContext
) -> None:
    page, problems = await signed_in(browser, node)
    await expect(page.locator("#simulator")).to_be_visible()
    await expect(page.locator("#sim-note")).to_contain_text("no real phone receives anything")
    await register(node, "bob", "b-ipad")
    alice = await node.device("alice", "a-phone")
    call_id = await place_call(alice, "bob")
    status_url = await invite_status_url(node, call_id)
    row = page.locator("#sim-pushes tbody tr", has_text="call.incoming")
    await expect(row).to_contain_text("voip call.incoming")
    await expect(row.locator(".answer")).to_have_text("200")
    await expect(row.locator(".became")).to_have_text("delivered")
    await expect(row.locator(".url")).to_have_text(status_url)
    await alice.request({"type": "call.hangup", "call_id": call_id})
    await expect(page.locator("#sim-pushes tbody tr", has_text="call.cancelled")).to_have_count(1)
    await expect(page.locator("#sim-count")).to_have_text("2")
    assert problems == []


async def android_device(node: RunningNode, user: str, device: str, *, online: bool) -> str:
    """An Android phone of `user` on the node's FCM simulator; its FCM token."""
    simulator = node.node.fcm_simulator
    assert simulator is not None, "a node with no FCM credentials pushes to its simulator"
    token = new_token()
    simulator.add_device(token, online=online)
    registered = await node.http().put(
        f"/v1/devices/{device}",
        json={"platform": "android", "fcm_token": token},
        headers={"Authorization": f"Bearer {node.auth.mint(user, 'device')}"},
    )
    assert registered.status_code == 201, registered.text
    return token


async def test_the_fcm_simulator_section_shows_each_message_and_what_became_of_it(
    node: RunningNode, browser: BrowserContext
) -> None:
    simulator = node.node.fcm_simulator
    assert simulator is not None
    page, problems = await signed_in(browser, node)
    await expect(page.locator("#fcm-simulator")).to_be_visible()
    await expect(page.locator("#fcm-simulator h2")).to_contain_text("FCM simulator")
    await expect(page.locator("#fcm-note")).to_contain_text("no real phone receives anything")
    await expect(page.locator("#fcm-empty")).to_be_visible()
    awake = await android_device(node, "bob", "b-pixel", online=True)
    asleep = await android_device(node, "bob", "b-tablet", online=False)
    alice = await node.device("alice", "a-phone")
    call_id = await place_call(alice, "bob")

    def row(token: str, kind: str, call: str) -> Locator:
        rows = page.locator("#fcm-messages tbody tr", has_text=token[:8])
        return rows.filter(has_text=kind).filter(has_text=call[:8])

    invite = await simulator.wait_for(lambda m: m.token == awake and m.data.get("type") == "call.incoming")
    delivered = row(awake, "call.incoming", call_id)
    await expect(delivered.locator(".answer")).to_have_text("200")
    await expect(delivered.locator(".became")).to_have_text("delivered")
    await expect(delivered.locator(".id").first).to_have_text(call_id[:8])
    await expect(delivered.locator(".id").first).to_have_attribute("title", call_id)
    android = delivered.locator(".android")
    await expect(android).to_have_text(f"{invite.android['ttl']} · {call_id[:8]}")
    await expect(android).to_have_attribute("title", f"ttl {invite.android['ttl']}, collapse_key {call_id}")
    await expect(delivered.locator(".url")).to_have_text(invite.data["status_url"])
    await expect(row(asleep, "call.incoming", call_id).locator(".became")).to_have_text("stored")
    await expect(page.locator("#fcm-count")).to_have_text("2")

    # The cancellation takes the sleeping tablet's stored invite's place: one per collapse key.
    await alice.request({"type": "call.hangup", "call_id": call_id})
    await expect(row(awake, "call.cancelled", call_id).locator(".became")).to_have_text("delivered")
    await expect(row(asleep, "call.cancelled", call_id).locator(".became")).to_have_text("stored")
    await expect(row(asleep, "call.incoming", call_id).locator(".became")).to_have_text("dropped (displaced)")
    await expect(page.locator("#fcm-count")).to_have_text("4")
    await expect(page.locator("#fcm-messages tbody tr").first).to_contain_text("call.cancelled")

    # The app was uninstalled from the phone: FCM refuses its token.
    simulator.uninstall(awake)
    again = await place_call(alice, "bob")
    refused = row(awake, "call.incoming", again)
    await expect(refused.locator(".answer")).to_have_text("404 UNREGISTERED")
    await expect(refused.locator(".became")).to_have_text("refused")
    await expect(page.locator("#fcm-empty")).to_be_hidden()
    assert problems == []


async def test_a_node_with_fcm_credentials_shows_no_fcm_simulator(
    node_factory: Any, fcm: tuple[FCMSimulator, dict[str, str]], browser: BrowserContext
) -> None:
    _, fcm_settings = fcm
    node = await node_factory(**fcm_settings)
    assert node.node.fcm_simulator is None and node.node.apns_simulator is not None
    page, problems = await signed_in(browser, node)
    await expect(page.locator("#simulator")).to_be_visible()
    # Hidden by what the page reads, not only by its markup: shown by hand, hidden again.
    await page.evaluate("document.getElementById('fcm-simulator').hidden = false")
    await register(node, "bob", "b-ipad")
    alice = await node.device("alice", "a-phone")
    async with page.expect_response(lambda r: r.url.endswith("/v1/ops/simulator/fcm")) as read:
        await place_call(alice, "bob")
    assert (await (await read.value).json())["simulator"] is False
    await expect(page.locator("#fcm-simulator")).to_be_hidden()
    await expect(page.locator("#sim-pushes tbody tr", has_text="call.incoming")).to_have_count(1)
    assert problems == []


async def test_the_login_hint_gives_a_command_that_works_and_does_not_wrap(
    node: RunningNode, browser: BrowserContext
) -> None:
    page = await browser.new_page()
    await page.set_viewport_size({"width": 420, "height": 800})  # a phone-sized window
    await page.goto(f"{node.base_url}/ops")
    command = page.locator("#token-command")
    await expect(command).to_have_text("python3 dev.py token NAME --role operator")
    # As tall as the same box holding one character: the command, --role included, never
    # breaks across lines.
    height, one_line = await command.evaluate(
        """e => { const probe = e.cloneNode(); probe.textContent = "x"; e.after(probe);
                  const heights = [e.getBoundingClientRect().height, probe.getBoundingClientRect().height];
                  probe.remove(); return heights; }"""
    )
    assert height == one_line, (height, one_line)
