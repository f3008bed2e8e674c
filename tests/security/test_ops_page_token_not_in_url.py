"""Issue 8, item 4: the operators' page (headless Chromium) opens its live feed with a
one-use ticket, never with its token in a URL; a ticket opens the feed once; a dropped
feed reconnects with a fresh ticket."""

from __future__ import annotations

import pytest
import websockets
from playwright.async_api import BrowserContext, expect
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningNode
from tests.ops.test_page import browser

pytestmark = pytest.mark.interop

__all__ = ["browser"]


async def test_the_page_opens_its_feed_with_a_ticket_not_its_token(node: RunningNode, browser: BrowserContext) -> None:
    token = node.auth.mint("ops-alice", "operator")
    page = await browser.new_page()
    sockets: list[str] = []
    urls: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("request", lambda request: urls.append(request.url))
    await page.goto(f"{node.base_url}/ops")
    await page.fill("#token", token)
    await page.click("#login-form button")
    await expect(page.locator("#connection")).to_have_text("live")

    assert len(sockets) == 1 and "/v1/ops/live?ticket=" in sockets[0], sockets
    assert "ticket=" in sockets[0] and "access_token" not in sockets[0]
    assert not [url for url in urls + sockets if token in url]

    # The ticket the page used is spent.
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(sockets[0])
    assert refused.value.response.status_code == 401

    # The feed drops: the page reconnects, with a new ticket.
    async with page.expect_websocket() as reconnected:
        await page.evaluate("socket.close()")
    await reconnected.value
    await expect(page.locator("#connection")).to_have_text("live")
    assert len(sockets) == 2 and sockets[1] != sockets[0] and "ticket=" in sockets[1], sockets
    assert not [url for url in urls + sockets if token in url]
