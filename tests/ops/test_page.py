"""The operators' page in headless Chromium (Debian's, driven by Playwright): a call placed
by two app devices appears ringing, turns answered then ended, and its timeline reads as
a sequence of steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.conftest import RunningNode, register
from tests.ops.conftest import place_call
from voip.store import now_ms

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1400, "height": 900},
        )
        yield context
        await context.close()


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
    # the call's status only now, after the call ended: a late push, caught.
    invite = page.locator("#timeline .entry[data-event='push']", has_text="(invite)")
    await expect(invite).to_contain_text("VoIP push (invite) → APNs 200 (sandbox")
    await expect(invite).to_contain_text("device b-ipad")
    await node.node.store.append_timeline(call_id, [{"at": now_ms(), "event": "sip_leg", "leg": "out"}])
    status = await node.http().get(
        f"/v1/calls/{call_id}/status", params={"device_id": "b-ipad"},
        headers={"Authorization": f"Bearer {node.auth.mint('bob', 'device')}"},
    )
    assert status.json()["end_call"] is True
    await expect(page.locator("#timeline .entry[data-event='sip_leg']")).to_contain_text('sip_leg: leg="out"')
    late = page.locator("#timeline .entry.late[data-event='status_check']")
    await expect(late).to_contain_text("status check via bearer: call was ended — told to end the call")
    await expect(page.locator("#late-checks")).to_have_text("1")
    await expect(page.locator("#chart-pushes text", has_text="accepted")).to_have_count(1)

    carol = await node.device("carol", "c-phone")
    ringing = await place_call(carol, "bob")
    await expect(page.locator(f"#live-calls tr[data-call-id='{ringing}'] .state")).to_have_text("ringing")
    await expect(page.locator("#chart-outcomes text", has_text="ringing")).to_have_count(1)

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "ops.png"), full_page=True)
    assert problems == []


async def test_a_device_token_is_refused_and_asked_again(node: RunningNode, browser: BrowserContext) -> None:
    page = await browser.new_page()
    await page.goto(f"{node.base_url}/ops")
    await page.fill("#token", node.auth.mint("bob", "device"))
    await page.click("#login-form button")
    await expect(page.locator("#login-error")).to_have_text("operator role required")
    await expect(page.locator("#board")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('voip.ops.token')") is None
