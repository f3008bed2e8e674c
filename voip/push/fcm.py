"""The FCM notifier: Android devices, through Firebase Cloud Messaging's HTTP v1 API.

Every push is a **data** message (the app decides what to show: a call UI, or nothing
for a call that is over), high priority, its `android.ttl` the time left until the
push's deadline (the ring deadline for an invite) and its `collapse_key` the call id,
so that for a phone that is offline FCM keeps the newest message about the call: the
cancellation displaces the stored invite, as with APNs.

Answers (`voip/push/fcm_errors.py`): 200 accepted; 404 / `UNREGISTERED` and an
`INVALID_ARGUMENT` about the token drop the token; 429 and 5xx are retried with backoff
(or after `Retry-After`) while the deadline allows, never after; 401 fetches a new
access token once. A request written whose answer never came is not sent again: FCM
may have taken it, and a push is never sent twice. A TLS certificate not trusted, FCM's
or the token endpoint's, fails the push at once: no retry mends a configuration error.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import structlog

from voip.log_throttle import RepeatedLog
from voip.push import payloads
from voip.push.fcm_auth import REFRESH_MARGIN, AccessTokenError, AccessTokens
from voip.push.fcm_errors import FCMError, judge, parse_error
from voip.push.fcm_tls import httpx_verify, refused_certificate, trusted
from voip.push.interface import Environment, Outcome, Push, PushKind, PushResult, PushType, TokenDrop

log = structlog.get_logger(__name__)

GOOGLE_ENDPOINT = "https://fcm.googleapis.com"
PRIORITY = "high"
"""The issue's contract. FCM's v1 reference spells the enum `NORMAL` | `HIGH`; its JSON
parser takes the lower-case names too, and the Firebase Admin SDKs send "high"."""
DATA_LIMIT = 4096
"""FCM refuses a message whose data (keys and values) is over 4 KB."""
PLATFORM = "android"
UNTRUSTED = "CertificateNotTrusted"


@dataclass(frozen=True, kw_only=True)
class FCMConfig:
    """Settings FCM_CREDENTIALS_FILE (read into `credentials`), FCM_PROJECT_ID,
    FCM_ENDPOINT and FCM_CA_FILE map onto these fields."""

    project_id: str
    credentials: dict[str, Any] = field(repr=False)
    """The service-account key's JSON."""
    endpoint: str = GOOGLE_ENDPOINT
    """`scheme://host[:port]`; HTTP/2 over https, HTTP/1.1 over plain http (a simulator)."""
    ca_file: str | None = None
    """PEM CAs that FCM's and the token endpoint's certificates are checked against; None:
    httpx's and requests's default bundle."""
    max_connections: int = 64
    response_timeout: float = 5.0
    """An attempt left unanswered this long is given up (and not sent again)."""
    max_attempts: int = 12
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    refresh_margin: float = REFRESH_MARGIN


@dataclass(frozen=True, slots=True)
class FCMRequest:
    """One push, ready to go but for its ttl (set per attempt from the deadline)."""

    token: str
    call_id: str
    data: dict[str, str]
    deadline: float
    """UNIX seconds: no attempt after it, and FCM keeps it no longer."""


class FCMNotifier:
    """Sends data messages to Android devices. Its device records hold `platform:
    "android"` and `fcm_token`."""

    platform = PLATFORM

    def __init__(
        self,
        config: FCMConfig,
        *,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.tokens = AccessTokens(config.credentials, refresh_margin=config.refresh_margin, ca_file=config.ca_file)
        endpoint = config.endpoint.rstrip("/")
        self.url = f"{endpoint}/v1/projects/{config.project_id}/messages:send"
        self.client = httpx.AsyncClient(
            http2=endpoint.startswith("https://"),
            limits=httpx.Limits(
                max_connections=config.max_connections, max_keepalive_connections=config.max_connections
            ),
            timeout=httpx.Timeout(config.response_timeout),
            verify=httpx_verify(config.ca_file),
            transport=transport,
        )
        self._rng = rng or random.Random()
        self._untrusted = RepeatedLog(log, "fcm.certificate_not_trusted")

    async def connect(self) -> None:
        """Readiness: an access token in hand (the first push then pays no exchange)."""
        await self.tokens.header()

    async def aclose(self) -> None:
        await self.client.aclose()
        self.tokens.close()

    def address(self, device: dict[str, Any], kind: PushKind) -> dict[str, Any] | None:
        # Android apps show their own missed-call notification from `call.cancelled`.
        if device.get("platform") != PLATFORM or kind is PushKind.MISSED_ALERT:
            return None
        token = device.get("fcm_token")
        return {"platform": PLATFORM, "token": token} if token else None

    @staticmethod
    def request(push: Push, *, now: float | None = None) -> FCMRequest:
        """The message's data, as strings: the fields of the APNs payload of the same push."""
        now = time.time() if now is None else now
        sent_at = str(int(now * 1000))
        match push.kind:
            case PushKind.INVITE:
                assert push.caller is not None and push.status_url is not None
                caller = orjson.dumps({"id": push.caller.id, "display_name": push.caller.display_name}).decode()
                data = {
                    "type": payloads.INCOMING,
                    "call_id": push.call_id,
                    "caller": caller,
                    "sent_at": sent_at,
                    "expires_at": str(int(push.deadline * 1000)),
                    "status_url": push.status_url,
                }
            case PushKind.CANCEL | PushKind.ENDED:
                assert push.reason is not None
                kind = payloads.CANCELLED if push.kind is PushKind.CANCEL else payloads.ENDED
                data = {"type": kind, "call_id": push.call_id, "reason": push.reason, "sent_at": sent_at}
            case PushKind.MISSED_ALERT:
                raise ValueError("FCM devices get no missed-call alert: the app shows one from call.cancelled")
        return FCMRequest(token=push.address["token"], call_id=push.call_id, data=data, deadline=push.deadline)

    def body(self, request: FCMRequest, left: float) -> bytes:
        """The JSON for `messages:send`, `ttl` the whole seconds left (FCM rounds down
        anyway): FCM keeps the message for an offline phone no longer than the deadline."""
        return orjson.dumps(
            {
                "message": {
                    "token": request.token,
                    "data": request.data,
                    "android": {"priority": PRIORITY, "ttl": f"{max(0, int(left))}s", "collapse_key": request.call_id},
                }
            }
        )

    async def notify(self, push: Push) -> PushResult:
        return await self.send(self.request(push))

    async def send(self, request: FCMRequest) -> PushResult:
        started = time.perf_counter()
        attempts = 0
        status: int | None = None
        reason: str | None = None
        message_id: str | None = None

        def finish(outcome: Outcome, cause: str | None = None, drop: TokenDrop | None = None) -> PushResult:
            if outcome is not Outcome.ACCEPTED:
                log.info(
                    "fcm push not accepted",
                    call_id=request.call_id,
                    outcome=str(outcome),
                    status=status,
                    reason=reason,
                    attempts=attempts,
                    token_tail=request.token[-8:],
                )
            return PushResult(
                apns_id="",
                device_token=request.token,
                environment=Environment.PRODUCTION,
                push_type=PushType.VOIP,
                outcome=outcome,
                status=status,
                reason=reason,
                timestamp=None,
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=attempts,
                likely_cause=cause,
                drop_token=drop,
                platform=PLATFORM,
                message_id=message_id,
                token_field="fcm_token",
                app=self.config.project_id,
            )

        size = sum(len(k.encode()) + len(v.encode()) for k, v in request.data.items())
        if size > DATA_LIMIT:
            reason = "MessageTooBig"
            return finish(Outcome.REJECTED, f"the data is {size} bytes; FCM accepts at most {DATA_LIMIT}")
        cause: str | None = None
        backoffs = 0
        reauthorised = False
        while attempts < self.config.max_attempts:
            left = request.deadline - time.time()
            if left <= 0:
                return finish(Outcome.EXPIRED, f"the deadline passed before FCM accepted the push; {cause}")
            try:
                # The cached token without a task; a refresh bounded by the deadline.
                cached = self.tokens.cached()
                authorization = cached if cached is not None else await asyncio.wait_for(self.tokens.header(), left)
            except TimeoutError:
                return finish(Outcome.EXPIRED, "the deadline passed while fetching an access token")
            except AccessTokenError as exc:
                if exc.untrusted_certificate:
                    reason, status = UNTRUSTED, None
                    self._untrusted.failed(traceback=False, cause=str(exc))
                    return finish(Outcome.FAILED, f"no OAuth2 access token: {exc}")
                reason, status = "AccessTokenError", None
                cause = f"no OAuth2 access token from the key's token_uri: {exc}"
                retry_after = None
            else:
                sent_at_ms = int(time.time() * 1000)
                try:
                    response = await self.client.post(
                        self.url,
                        content=self.body(request, left),
                        headers={"authorization": authorization, "content-type": "application/json"},
                        timeout=min(self.config.response_timeout, left),
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                    if (refused := refused_certificate(exc)) is not None:
                        reason, status = UNTRUSTED, None
                        cause = (
                            f"the TLS certificate of FCM_ENDPOINT, {self.config.endpoint}, is not trusted: "
                            f"{refused} ({trusted(self.config.ca_file)})"
                        )
                        self._untrusted.failed(traceback=False, cause=cause)
                        return finish(Outcome.FAILED, cause)
                    # Nothing was written: FCM never saw it, so going again sends it once.
                    reason, status = type(exc).__name__, None
                    cause = "could not connect to FCM"
                    retry_after = None
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    # Written, maybe taken: sending again could ring the phone twice.
                    attempts += 1
                    reason = "NoResponse"
                    outcome = Outcome.EXPIRED if time.time() >= request.deadline else Outcome.FAILED
                    return finish(outcome, f"no answer from FCM ({type(exc).__name__}); not sent again")
                else:
                    attempts += 1
                    status = response.status_code
                    self._untrusted.ok()
                    error: FCMError | None = None
                    if status == 200:
                        reason = None
                        message_id = _message_name(response)
                    else:
                        error = parse_error(status, _json(response))
                        reason = error.code or f"HTTP{status}"
                    if status == 401 and not reauthorised:
                        # The token may have been revoked early: one fresh token, then the verdict.
                        reauthorised = True
                        self.tokens.invalidate(authorization)
                        continue
                    verdict = judge(error, status, sent_at_ms)
                    if verdict.outcome is not None:
                        return finish(verdict.outcome, verdict.likely_cause, verdict.drop_token)
                    cause = verdict.likely_cause
                    retry_after = _retry_after(response)
            delay = self._rng.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2**backoffs))
            backoffs += 1
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.time() + delay >= request.deadline:
                return finish(Outcome.EXPIRED, f"the deadline came before the next retry; {cause}")
            await asyncio.sleep(delay)
        return finish(Outcome.FAILED, f"gave up after {attempts} attempts; {cause}")


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _message_name(response: httpx.Response) -> str | None:
    body = _json(response)
    name = body.get("name") if isinstance(body, dict) else None
    return name if isinstance(name, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (FCM sends seconds with 429 and some 5xx), bounded."""
    value = response.headers.get("retry-after", "")
    return min(float(value), 3600.0) if value.isdigit() else None
