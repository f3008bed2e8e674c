"""Delivers the webhook outbox: on every node, from Redis, at least once, in order per call
and URL, retried with a growing pause for up to a day (docs/webhooks.md#delivery).

A node that dies mid-delivery takes nothing with it: its claims' leases run out and
another node takes the calls, from the cursors Redis holds. What it had sent but not yet
recorded is sent again: a receiver drops an event id it has seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import structlog

from voip import metrics
from voip.clock import Clock
from voip.log_throttle import RepeatedLog
from voip.stores.layout import BUCKETS, bucket_of
from voip.stores.webhooks import Taken, WebhookOutbox
from voip.tasks import stop_task
from voip.webhooks.events import GIVE_UP_MS, event_body, retry_delay_ms
from voip.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature

log = structlog.get_logger(__name__)

# A call whose events are all delivered but which is not over yet is looked at again this
# often: its next event files it again at once, this only covers a node that died between
# writing an event and filing the call (on a cluster the two are on different shards), at
# the price of one look per live call per interval.
RECHECK_MS = 120_000
# A claim that meets another node's lock on the call looks again this much later.
LOCKED_RETRY_MS = 200
# Passes one claim makes over a call whose events keep coming in while it sends.
MAX_PASSES = 8
USER_AGENT = "voip-backend-webhooks/1"


def url_key(url: str) -> str:
    """How a URL is named in Redis and on /ops: its hash, never the URL (it may hold a token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def shown_url(url: str) -> str:
    """A URL as /ops and logs may show it: scheme, host and path; no query, no user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def signed_headers(secret: str, body: bytes, event_id: str | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(secret, body, int(time.time())),
    }
    if event_id is not None:
        headers[EVENT_ID_HEADER] = event_id
    return headers


class WebhookDelivery:
    def __init__(
        self,
        outbox: WebhookOutbox,
        urls: list[str],
        secret: str,
        *,
        clock: Clock,
        node: str,
        interval: float = 0.2,
        lease_ms: int = 60_000,
        request_timeout: float = 10.0,
        concurrency: int = 8,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._outbox = outbox
        self._urls = list(urls)
        self._secret = secret
        self._clock = clock
        self._node = node
        self._interval = interval
        self._lease_ms = lease_ms
        self._request_timeout = request_timeout
        self._client = client or httpx.AsyncClient(
            timeout=request_timeout, follow_redirects=False, limits=httpx.Limits(max_connections=concurrency)
        )
        self._owns_client = client is None
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._rounds: set[asyncio.Task[None]] = set()
        self._next_bucket = 0
        self._hot: set[int] = set()  # buckets this node filed an event in: looked at next
        self._wake = asyncio.Event()
        self._poll_failed = RepeatedLog(log, "webhooks.poll_failed")
        self._failing: dict[str, bool] = {}  # url key -> this node last saw it failing

    def kick(self, call_id: str) -> None:
        """An event was filed for this call by this node: look at once, not next round."""
        self._hot.add(bucket_of(call_id))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        for task in list(self._rounds):
            await stop_task(task)
        if self._owns_client:
            await self._client.aclose()

    async def _run(self) -> None:
        per_tick = 4
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            # Cleared before the claim: a kick that comes while it runs wakes the next one.
            self._wake.clear()
            buckets = sorted(self._hot)
            self._hot.clear()
            if loop.time() >= next_tick:
                # The round over every bucket: other nodes' events, retries that came due.
                # A kick between ticks claims only its own buckets: one script, not five.
                next_tick = loop.time() + self._interval
                for i in range(per_tick):
                    b = (self._next_bucket + i) % BUCKETS
                    if b not in buckets:
                        buckets.append(b)
                self._next_bucket = (self._next_bucket + per_tick) % BUCKETS
            try:
                await self.deliver_due(buckets)
                self._poll_failed.ok()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away for a moment: the events wait in Redis
                self._poll_failed.failed()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_tick - loop.time()))
            except TimeoutError:
                pass

    async def deliver_due(self, buckets: Iterable[int] | None = None) -> int:
        """Claim the due calls of `buckets` (all by default) and start a delivery round for
        each, in the background; returns how many were claimed."""
        chosen = list(range(BUCKETS)) if buckets is None else list(buckets)
        if not chosen:
            return 0
        claimed = await self._outbox.claim_due(self._clock.now_ms(), self._lease_ms, chosen)
        for call_id, lease in claimed:
            task = asyncio.create_task(self._round(call_id, lease), name=f"webhook:{call_id}")
            self._rounds.add(task)
            task.add_done_callback(self._round_done)
        return len(claimed)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        if not task.cancelled() and (failure := task.exception()) is not None:
            # Its lease runs out and the call is claimed again: nothing is lost.
            log.error("task.failed", task=task.get_name(), exc_info=failure)

    async def idle(self) -> None:
        """Wait for the delivery rounds running now (tests, the benchmark)."""
        while self._rounds:
            await asyncio.wait(set(self._rounds))

    async def _round(self, call_id: str, lease: int) -> None:
        async with self._slots:
            token = uuid.uuid4().hex
            # Events filed while a pass ran are sent by the next pass at once, under the
            # same claim: a call's events come in bursts (created, ringing, answered).
            for _ in range(MAX_PASSES):
                taken = await self._outbox.take(call_id, token, self._lease_ms)
                if taken is None:
                    # Another node holds the call's lock; it goes on to the newest events
                    # itself. Looked at again soon, in case it died.
                    await self._outbox.reschedule(call_id, lease, self._clock.now_ms() + LOCKED_RETRY_MS)
                    return
                sent, next_due, cursors = await self._pass(call_id, taken)
                if next_due is not None:
                    after: int | None = next_due
                elif taken.state in ("ringing", "answered"):
                    after = self._clock.now_ms() + RECHECK_MS
                else:
                    after = None  # final (or gone) and every URL has every event
                length, _ = await self._outbox.settle(call_id, token, cursors, lease, after)
                if next_due is not None or length <= sent:
                    return

    async def _pass(self, call_id: str, taken: Taken) -> tuple[int, int | None, dict[str, int]]:
        """Send each URL what it has not had: (events seen, when to try again (None: every
        URL has them all), the cursor fields to write)."""
        events = [orjson.loads(raw) for raw in taken.events]
        cursors: dict[str, int] = {}
        next_due: int | None = None
        started = self._clock.now_ms()
        for url in self._urls:
            key = url_key(url)
            sent = int(taken.cursors.get(f"{key}:sent", 0))
            if sent >= len(events):
                continue
            due = int(taken.cursors.get(f"{key}:next", 0))
            if due > started:  # backing off
                next_due = due if next_due is None else min(next_due, due)
                continue
            sent, retry_at, fields = await self._send_from(call_id, url, key, events, sent, taken.cursors)
            cursors.update(fields)
            if retry_at is not None:
                next_due = retry_at if next_due is None else min(next_due, retry_at)
        return len(events), next_due, cursors

    async def _send_from(
        self, call_id: str, url: str, key: str, events: list[dict[str, Any]], sent: int, cursors: dict[str, str]
    ) -> tuple[int, int | None, dict[str, int]]:
        """Send `events[sent:]` to `url` in order until one fails. Returns how many it has
        now, when to try again (None: it has them all), and the cursor fields to write."""
        failures = int(cursors.get(f"{key}:fails", 0))
        since = int(cursors.get(f"{key}:since", 0))
        while sent < len(events):
            shaped = event_body(call_id, events[sent])
            body, event = orjson.dumps(shaped), str(shaped["id"])
            error = await self._post(url, body, event)
            now = self._clock.now_ms()
            if error is None:
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                sent, failures, since = sent + 1, 0, 0
                await self._recovered(url, key)
                continue
            failures += 1
            since = since or now
            if now - since >= GIVE_UP_MS:
                metrics.WEBHOOK_DELIVERIES.labels("dropped").inc()
                log.error("webhook.dropped", call_id=call_id, event_id=event, url=shown_url(url), failures=failures)
                sent, failures, since = sent + 1, 0, 0
                continue
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            retry_at = now + retry_delay_ms(failures)
            log.warning(
                "webhook.failed",
                call_id=call_id,
                event_id=event,
                url=shown_url(url),
                error=error,
                failures=failures,
                retry_in_ms=retry_at - now,
            )
            await self._failed(url, key, error, since, now)
            return (
                sent,
                retry_at,
                {f"{key}:sent": sent, f"{key}:fails": failures, f"{key}:since": since, f"{key}:next": retry_at},
            )
        return sent, None, {f"{key}:sent": sent, f"{key}:fails": 0, f"{key}:since": 0, f"{key}:next": 0}

    async def _post(self, url: str, body: bytes, event_id: str) -> str | None:
        """None when the receiver took it (2xx), else what went wrong, in a few words."""
        started = time.perf_counter()
        try:
            response = await self._client.post(url, content=body, headers=signed_headers(self._secret, body, event_id))
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        finally:
            metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _failed(self, url: str, key: str, error: str, since: int, now: int) -> None:
        self._failing[key] = True
        metrics.WEBHOOK_FAILING.labels(key).set(1)
        record = {
            "url": shown_url(url),
            "url_key": key,
            "error": error,
            "failing_since": since,
            "last_attempt": now,
            "node": self._node,
        }
        try:
            await self._outbox.note_failure(key, record)
        except Exception:  # only /ops's view: the delivery itself is recorded by settle()
            log.warning("webhook.note_failure_failed", url=shown_url(url), exc_info=True)

    async def _recovered(self, url: str, key: str) -> None:
        if not self._failing.get(key, True):
            return
        self._failing[key] = False
        metrics.WEBHOOK_FAILING.labels(key).set(0)
        try:
            await self._outbox.clear_failure(key)
        except Exception:
            log.warning("webhook.clear_failure_failed", url=shown_url(url), exc_info=True)
