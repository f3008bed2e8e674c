"""The manual clock the ring-timeout tests move by hand: sleepers wake when, and only
when, time reaches them."""

from __future__ import annotations

import asyncio

from voip.clock import ManualClock


async def test_advance_wakes_the_sleepers_that_are_due_and_no_others() -> None:
    clock = ManualClock(start_ms=1_000)
    short = asyncio.create_task(clock.sleep(0.2))
    long = asyncio.create_task(clock.sleep(45))
    await clock.sleepers(2)
    clock.advance(199)
    await asyncio.sleep(0)
    assert not short.done() and not long.done()
    clock.advance(1)
    await short
    assert not long.done()
    assert (clock.now_ms(), clock.monotonic()) == (1_200, 0.2)
    clock.advance(44_800)
    await long
