"""Debian's headless Chromium (/usr/bin/chromium, never `playwright install`), driven by
Playwright, for the tests of pages: the operators' page, the JsSIP softphone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, Page, async_playwright

from tests import interop

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@contextlib.asynccontextmanager
async def chromium(profile: Path, *, args: Sequence[str] = (), **options: Any) -> AsyncIterator[BrowserContext]:
    """A Chromium on its own profile; `args` besides ARGS, `options` Playwright's."""
    interop.started("chromium")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=[*ARGS, *args], headless=True, **options
        )
        try:
            yield context
        finally:
            await context.close()


async def screenshot(page: Page, name: str, **options: Any) -> None:
    """The page as test-artifacts/`name`.png, for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), **options)
