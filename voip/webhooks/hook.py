"""The call-control hook: before anything rings, the app's backend says whether the call
may ring, and may name the caller and add the app's own data (docs/webhooks.md#the-call-hook).

POST VOIP_CALL_HOOK_URL, signed like the webhooks:
  {"call_id", "caller": {"user", "device"}, "callee", "source": "ws"|"sip", "custom"}
Answer (2xx, JSON): {"action": "ring"|"reject", "reason"?, "caller_name"?, "custom"?}.
No usable answer within VOIP_CALL_HOOK_TIMEOUT_MS (a timeout, a refused connection, a
non-2xx, an answer that is not that shape): VOIP_CALL_HOOK_FAILURE decides, `open` rings,
`closed` refuses.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

from voip import metrics
from voip.display_names import MAX_RAW_DISPLAY_NAME
from voip.protocol import MAX_CUSTOM_BYTES
from voip.webhooks.delivery import shown_url, signed_headers

log = structlog.get_logger(__name__)


def check_custom(value: Any) -> dict[str, Any] | None:
    """`custom` as the contract says, or ValueError."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("custom must be a JSON object")
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        raise ValueError("custom must be a JSON object") from None
    if size > MAX_CUSTOM_BYTES:
        raise ValueError(f"custom must be {MAX_CUSTOM_BYTES} bytes of JSON or less")
    return value


class HookAnswer(BaseModel):
    """What the app's backend may answer; anything else is no answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    action: Literal["ring", "reject"]
    reason: Annotated[str, StringConstraints(max_length=200)] | None = None
    caller_name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RAW_DISPLAY_NAME)] | None = None
    custom: dict[str, Any] | None = None

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: Any) -> dict[str, Any] | None:
        return check_custom(value)


@dataclass(frozen=True, slots=True)
class Decision:
    ring: bool
    reason: str | None = None
    """Given by the backend with a reject; passed on to the caller."""
    caller_name: str | None = None
    custom: dict[str, Any] | None = None
    answered: bool = True
    """False: no usable answer came, the failure policy decided."""


class CallHook:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_ms: int,
        fail_open: bool,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout = timeout_ms / 1000
        self._fail_open = fail_open
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._owns_client = client is None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def decide(
        self,
        call_id: str,
        *,
        caller_user: str,
        caller_device: str,
        callee: str,
        source: Literal["ws", "sip"],
        custom: dict[str, Any] | None,
    ) -> Decision:
        body = orjson.dumps(
            {
                "call_id": call_id,
                "caller": {"user": caller_user, "device": caller_device},
                "callee": callee,
                "source": source,
                "custom": custom,
            }
        )
        started = time.perf_counter()
        try:
            # The whole exchange, connect to last byte, within the timeout: httpx's own
            # timeouts are per phase, and a backend that trickles its answer would pass them.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(
                    self._url, content=body, headers=signed_headers(self._secret, body), timeout=self._timeout
                )
            problem = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
            answer = HookAnswer.model_validate_json(response.content) if problem is None else None
        except (TimeoutError, httpx.TimeoutException):
            problem, answer = "timeout", None
        except httpx.HTTPError as exc:
            problem, answer = type(exc).__name__, None
        except ValidationError as exc:
            problem, answer = f"bad answer: {exc.errors()[0]['msg']}", None
        finally:
            metrics.CALL_HOOK_SECONDS.observe(time.perf_counter() - started)
        if answer is None:
            outcome = "failed_open" if self._fail_open else "failed_closed"
            metrics.CALL_HOOK.labels(outcome).inc()
            log.warning("call_hook.failed", call_id=call_id, url=shown_url(self._url), error=problem, policy=outcome)
            return Decision(ring=self._fail_open, answered=False)
        metrics.CALL_HOOK.labels(answer.action).inc()
        return Decision(
            ring=answer.action == "ring",
            reason=answer.reason,
            caller_name=answer.caller_name,
            custom=answer.custom,
        )
