"""A browser softphone over SIP-over-WebSocket (RFC 7118): JsSIP from npm (tests/browser/
package.json), bundled by esbuild, in a page served on loopback, in Debian's headless
Chromium with fake media devices, driven by Playwright. It registers with digest at
`/v1/sip`; an app user (a WebSocket device) calls it and it answers; it calls the app user,
who answers; either side hangs up; each side cancels while ringing.

The node relays SDP: the app user's offer and answer come from an RTCPeerConnection in the
same page (`appOffer`, `appAnswer`), since JsSIP hands what it receives to the browser."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page

from tests import interop
from tests.chromium import chromium, screenshot
from tests.conftest import DeviceClient, RunningNode
from tests.sipcalls.conftest import ACCOUNTS, DOMAIN, until_unbound

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
ESBUILD = HERE / "node_modules" / ".bin" / "esbuild"
JSSIP = HERE / "node_modules" / "jssip" / "lib" / "JsSIP.js"
# Fake media devices; signalling only: no ICE candidates, so no media packets leave the page.
MEDIA = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The softphone page and JsSIP bundled for it, served over HTTP on loopback."""
    if not JSSIP.exists() or not ESBUILD.exists():
        pytest.fail("JsSIP is not installed: run `npm ci` in tests/browser (python3 dev.py test does)")
    root = tmp_path_factory.mktemp("softphone")
    interop.started("esbuild")
    bundle = [
        "--bundle",
        "--format=iife",
        "--global-name=JsSIP",
        "--log-level=warning",
        f"--outfile={root / 'jssip.js'}",
    ]
    subprocess.run([str(ESBUILD), str(JSSIP), *bundle], check=True, cwd=HERE)
    shutil.copy(HERE / "softphone.html", root / "index.html")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile", args=MEDIA) as context:
        yield context


@pytest.fixture
async def sip_ws_node(node_factory: Any) -> RunningNode:
    node: RunningNode = await node_factory(
        sip_enabled=True,
        sip_port=0,
        sip_domain=DOMAIN,
        sip_accounts=ACCOUNTS,
        # The default challenges, SHA-256 then MD5: JsSIP answers the last one, MD5.
    )
    return node


class Softphone:
    def __init__(self, page: Page, problems: list[str]) -> None:
        self.page = page
        self.problems = problems

    async def until(self, kind: str, timeout: float = 15, **fields: Any) -> dict[str, Any]:
        """The first event of `kind` with `fields` (waiting for it if need be)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in await self.page.evaluate("kind => window.seen(kind)", kind):
                if all(event.get(k) == v for k, v in fields.items()):
                    return dict(event)
            if loop.time() >= deadline:
                events = await self.page.evaluate("window.events")
                raise AssertionError(f"no {kind} {fields} within {timeout}s; events {events}; page {self.problems}")
            await asyncio.sleep(0.05)

    async def count(self, kind: str) -> int:
        return len(await self.page.evaluate("kind => window.seen(kind)", kind))

    async def clear(self) -> None:
        await self.page.evaluate("window.events.length = 0")


async def open_softphone(browser: BrowserContext, site: str, node: RunningNode, user: str) -> Softphone:
    """A page whose JsSIP starts registering `user` at the node's `/v1/sip`."""
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(site)
    ws_url = node.base_url.replace("http://", "ws://") + "/v1/sip"
    await page.evaluate(
        "([url, uri, password]) => window.start(url, uri, password)",
        [ws_url, f"sip:{user}@{DOMAIN}", ACCOUNTS[user]],
    )
    return Softphone(page, problems)


@pytest.fixture
async def carol(sip_ws_node: RunningNode, browser: BrowserContext, site: str) -> Softphone:
    """carol's softphone, registered."""
    phone = await open_softphone(browser, site, sip_ws_node, "carol")
    await phone.until("registered")
    return phone


@pytest.fixture
async def alice(sip_ws_node: RunningNode, carol: Softphone) -> DeviceClient:
    """alice's app, connected once carol's softphone is registered."""
    return await sip_ws_node.device("alice", "a-phone")


async def app_calls_softphone(alice: DeviceClient, carol: Softphone) -> str:
    offer = await carol.page.evaluate("window.appOffer()")
    started = await alice.request({"type": "call.start", "callee": "carol", "sdp": offer})
    assert started["type"] == "call.started", started
    await carol.until("session", originator="remote")
    await alice.expect("call.ringing", call_id=started["call_id"])
    return str(started["call_id"])


async def softphone_calls_app(alice: DeviceClient, carol: Softphone) -> dict[str, Any]:
    await carol.page.evaluate(f"window.call('sip:alice@{DOMAIN}')")
    incoming = await alice.expect("call.incoming", timeout=15)
    # Authenticated by digest (a 407 answered): the caller is the account, not the socket.
    assert incoming["caller"] == f"sip:carol@{DOMAIN}"
    assert "a=fingerprint" in incoming["sdp"]  # JsSIP's WebRTC offer, relayed as it is
    await alice.request({"type": "call.ringing", "call_id": incoming["call_id"]})
    await carol.until("progress", originator="remote")
    return incoming


async def app_answers_softphone(alice: DeviceClient, carol: Softphone) -> str:
    """The softphone calls the app user, who answers: the call's id once JsSIP sent its ACK."""
    incoming = await softphone_calls_app(alice, carol)
    answer = await carol.page.evaluate("offer => window.appAnswer(offer)", incoming["sdp"])
    await alice.request({"type": "call.answer", "call_id": incoming["call_id"], "sdp": answer})
    await carol.until("confirmed", originator="local")  # its own ACK
    return str(incoming["call_id"])


async def test_jssip_registers_then_takes_a_call_and_the_app_hangs_up(
    sip_ws_node: RunningNode, carol: Softphone, alice: DeviceClient
) -> None:
    node = sip_ws_node
    assert node.node.sip is not None
    (binding,) = (await node.node.sip.registrar.bindings("carol")).values()
    assert binding.transport == "WS" and binding.contact.endswith(".invalid;transport=ws")

    call_id = await app_calls_softphone(alice, carol)
    await carol.page.evaluate("window.answer()")
    answered = await alice.expect("call.answered", call_id=call_id)
    await carol.until("confirmed")
    # The softphone's answer is one the app's own peer connection takes.
    assert await carol.page.evaluate("sdp => window.appTakesAnswer(sdp)", answered["sdp"]) == "stable"

    await alice.request({"type": "call.hangup", "call_id": call_id})
    assert (await carol.until("ended"))["originator"] == "remote"
    timeline = await node.timeline(call_id, lambda t: any(e.get("received") == 200 for e in t))
    assert any(e.get("event") == "sip" and e.get("direction") == "fork" for e in timeline)
    await screenshot(carol.page, "jssip-takes-a-call")


async def test_jssip_calls_an_app_user_who_answers_then_jssip_hangs_up(carol: Softphone, alice: DeviceClient) -> None:
    call_id = await app_answers_softphone(alice, carol)
    await carol.page.evaluate("window.hangUp()")
    await alice.expect("call.ended", call_id=call_id)
    assert (await carol.until("ended"))["originator"] == "local"


async def test_jssip_calls_and_the_app_user_hangs_up(carol: Softphone, alice: DeviceClient) -> None:
    call_id = await app_answers_softphone(alice, carol)
    await alice.request({"type": "call.hangup", "call_id": call_id})
    assert (await carol.until("ended"))["originator"] == "remote"


async def test_jssip_cancels_while_the_app_user_rings(carol: Softphone, alice: DeviceClient) -> None:
    incoming = await softphone_calls_app(alice, carol)
    await carol.page.evaluate("window.hangUp()")  # before an answer: a CANCEL
    await alice.expect("call.cancelled", call_id=incoming["call_id"])
    failed = await carol.until("failed")
    assert (failed["originator"], failed["cause"]) == ("local", "Canceled")
    assert await carol.count("confirmed") == 0


async def test_the_app_user_cancels_while_jssip_rings(carol: Softphone, alice: DeviceClient) -> None:
    call_id = await app_calls_softphone(alice, carol)
    await alice.request({"type": "call.hangup", "call_id": call_id})
    failed = await carol.until("failed")
    assert (failed["originator"], failed["cause"]) == ("remote", "Canceled")
    assert await carol.count("confirmed") == 0


async def test_closing_the_page_unregisters_the_softphone(sip_ws_node: RunningNode, carol: Softphone) -> None:
    node = sip_ws_node
    assert node.node.sip is not None
    assert await node.node.sip.registrar.bindings("carol")
    await carol.page.close()  # no un-REGISTER: the socket just ends
    await until_unbound(node, "carol")


async def test_jssip_gives_up_when_the_last_challenge_is_not_md5(
    node_factory: Any, browser: BrowserContext, site: str
) -> None:
    """Why docs/sip-gateway.md asks for MD5 last: JsSIP's parser keeps only the last
    WWW-Authenticate of a response, and JsSIP answers only MD5."""
    node: RunningNode = await node_factory(
        sip_enabled=True,
        sip_port=0,
        sip_domain=DOMAIN,
        sip_accounts=ACCOUNTS,
        sip_digest_algorithms=["MD5", "SHA-256"],
    )
    carol = await open_softphone(browser, site, node, "carol")
    failed = await carol.until("registrationFailed")
    assert failed["cause"] == "Authentication Error"
    assert node.node.sip is not None and await node.node.sip.registrar.bindings("carol") == {}
