"""The APNs notifier: one aioapns client per environment, our retry policy around it."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aioapns import APNs
from aioapns.exceptions import ConnectionError as ConnectFailure
from hpack import NeverIndexedHeaderTuple

from voip.push import payloads
from voip.push.apns_connection import (
    APNsConnection,
    AttemptFailure,
    NotSent,
    Response,
)
from voip.push.apns_errors import RETIRE_CONNECTION_REASONS, judge, likely_cause
from voip.push.apns_token import DEFAULT_REFRESH_AFTER, ProviderTokens
from voip.push.interface import (
    Environment,
    Outcome,
    Push,
    PushKind,
    PushRequest,
    PushResult,
    PushType,
    TokenDrop,
)

log = structlog.get_logger(__name__)

APPLE_HOSTS: dict[Environment, str] = {
    Environment.SANDBOX: "api.sandbox.push.apple.com",
    Environment.PRODUCTION: "api.push.apple.com",
}
APPLE_PORT = 443
_PUSH_TYPES: dict[PushType, bytes] = {kind: kind.value.encode() for kind in PushType}


@dataclass(frozen=True, kw_only=True)
class APNsConfig:
    """Settings APNS_KEY_FILE, APNS_KEY_ID, APNS_TEAM_ID, APNS_BUNDLE_ID, APNS_ENDPOINT and
    APNS_CA_FILE map onto the fields of the same name."""

    bundle_id: str
    key_id: str | None = None
    team_id: str | None = None
    key_file: str | None = None
    key_pem: str | None = field(default=None, repr=False)
    cert_file: str | None = None
    """Certificate auth instead of a key: a PEM holding the certificate and its private key."""
    endpoint: str | None = None
    """`host:port` that serves both environments (a simulator); `None`: Apple's hosts."""
    ca_file: str | None = None
    """CA to trust instead of the system store (a simulator's)."""
    max_connections: int = 4
    """Per environment. One authenticated connection carries up to 1000 streams."""
    response_timeout: float = 3.0
    """An attempt left unanswered this long is abandoned, with its connection."""
    max_attempts: int = 12
    """Requests written per push at most; the deadline is usually the tighter bound."""
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    token_refresh_after: float = DEFAULT_REFRESH_AFTER
    clock: Callable[[], float] = field(default=time.time, repr=False)
    """Wall clock for provider-token `iat` (tests pass the simulator's)."""

    def private_key(self) -> str | None:
        if self.key_pem is not None:
            return self.key_pem
        if self.key_file is not None:
            return Path(self.key_file).read_text()
        return None

    def address(self, environment: Environment) -> tuple[str, int]:
        if self.endpoint:
            host, port = self.endpoint.rsplit(":", 1)
            return host.strip("[]"), int(port)
        return APPLE_HOSTS[environment], APPLE_PORT


def bundle_of(topic: str) -> str:
    """The app a topic belongs to: `<bundle>.voip` for PushKit, `<bundle>` for alerts."""
    return topic.removesuffix(".voip")


class APNsSender:
    """One aioapns client, hence one connection pool, for one APNs environment."""

    def __init__(self, config: APNsConfig, environment: Environment, key_pem: str | None) -> None:
        self.environment = environment
        self.host, self.port = config.address(environment)
        context = ssl.create_default_context(cafile=config.ca_file)
        context.set_alpn_protocols(["h2"])
        sandbox = environment == Environment.SANDBOX
        if config.cert_file:
            client = APNs(
                client_cert=config.cert_file,
                topic=config.bundle_id,
                max_connections=config.max_connections,
                use_sandbox=sandbox,
                ssl_context=context,
            )
        else:
            # aioapns wants the key to build its own per-connection JWTs; our
            # connections never ask for them (see apns_token).
            client = APNs(
                key=key_pem,
                key_id=config.key_id,
                team_id=config.team_id,
                topic=config.bundle_id,
                max_connections=config.max_connections,
                use_sandbox=sandbox,
                ssl_context=context,
            )
        self.protocol_class: type[APNsConnection] = type(
            f"APNs{environment.title()}Connection",
            (APNsConnection,),
            {
                "APNS_SERVER": self.host,
                "APNS_PORT": self.port,
                "ping_interval": config.ping_interval,
                "ping_timeout": config.ping_timeout,
            },
        )
        client.pool.protocol_class = self.protocol_class
        self.client = client
        self.pool = client.pool
        authority = self.host if self.port == APPLE_PORT else f"{self.host}:{self.port}"
        self._constant: tuple[tuple[bytes, bytes], ...] = (
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
        )

    @property
    def connections(self) -> list[APNsConnection]:
        return [c for c in self.pool.connections if isinstance(c, APNsConnection)]

    async def connect(self) -> None:
        """Open a connection ahead of the first push."""
        await self.pool.acquire()

    def headers(self, request: PushRequest) -> list[tuple[bytes, bytes]]:
        """The request's headers but `authorization`, shaped for HPACK (see
        `apns_connection.lean_h2`): values that repeat from push to push are plain tuples,
        which the connection indexes once and then sends as one byte each; values unique
        to this push are never indexed, so they cannot push the repeating ones out of
        APNs's 4 KB table."""
        headers = [
            *self._constant,
            NeverIndexedHeaderTuple(b":path", b"/3/device/" + request.device_token.encode()),
            NeverIndexedHeaderTuple(b"apns-id", request.apns_id.encode()),
            (b"apns-topic", request.topic.encode()),
            (b"apns-push-type", _PUSH_TYPES[request.push_type]),
            (b"apns-priority", b"10" if request.priority == 10 else str(request.priority).encode()),
        ]
        if request.expiration is not None:
            headers.append(NeverIndexedHeaderTuple(b"apns-expiration", str(request.expiration).encode()))
        if request.collapse_id is not None:
            headers.append(NeverIndexedHeaderTuple(b"apns-collapse-id", request.collapse_id.encode()))
        return headers

    async def attempt(
        self, headers: list[tuple[bytes, bytes]], body: bytes, end: float, response_timeout: float
    ) -> tuple[Response | AttemptFailure | None, APNsConnection | None]:
        """Write the request once and wait for its answer. `None`: the deadline came first
        and nothing was written."""
        loop = asyncio.get_running_loop()
        connection: APNsConnection | None = None
        answer_by: float | None = None  # set once the request is written
        try:
            # One timeout for both halves (a push's CPU counts): the deadline until the
            # request is written, then the earlier of the deadline and the response timeout.
            async with asyncio.timeout_at(end) as window:
                pooled = await self.pool.acquire()
                if not isinstance(pooled, APNsConnection):
                    raise NotSent("foreign connection")
                connection = pooled
                future = await connection.open_stream(headers, body, not_after=end)
                answer_by = min(end, loop.time() + response_timeout)
                window.reschedule(answer_by)
                return await future, connection
        except TimeoutError:
            if answer_by is None or connection is None:
                return None, None
            connection.abandon()
            return (CutByDeadline() if answer_by >= end else NoResponse()), connection
        except ConnectFailure:
            return ConnectFailed("could not connect"), None
        except NotSent as failure:  # raised before the request is written, never by its future
            return (None if failure.reason == "DeadlinePassed" else failure), None
        except AttemptFailure as failure:
            return failure, connection

    def close(self) -> None:
        self.pool.close()


class ConnectFailed(AttemptFailure):
    reason = "ConnectFailed"
    unsent = True


class NoResponse(AttemptFailure):
    reason = "NoResponse"


class CutByDeadline(NoResponse):
    """Written, but the push's own deadline came before APNs answered: says nothing about
    APNs, so the last answer it did give stays the push's status and reason."""


class APNsNotifier:
    """Sends VoIP and alert pushes to APNs; construct it inside a running event loop.

    Its device records hold `voip_token` (PushKit), `alert_token` (the app's ordinary
    APNs token), `apns_environment` and `bundle_id`."""

    def __init__(self, config: APNsConfig, *, rng: random.Random | None = None) -> None:
        asyncio.get_running_loop()  # aioapns's pool binds to the loop it is built in
        self.config = config
        key_pem = None if config.cert_file else config.private_key()
        if not config.cert_file:
            if not (key_pem and config.key_id and config.team_id):
                raise ValueError("APNs needs a key (key_file or key_pem, key_id, team_id) or a cert_file")
        self.tokens = (
            ProviderTokens(
                key_pem,
                config.key_id or "",
                config.team_id or "",
                clock=config.clock,
                refresh_after=config.token_refresh_after,
            )
            if key_pem
            else None
        )
        self._senders = {env: APNsSender(config, env, key_pem) for env in Environment}
        self._rng = rng or random.Random()

    @property
    def bundle_id(self) -> str:
        return self.config.bundle_id

    def sender(self, environment: Environment | str) -> APNsSender:
        return self._senders[Environment(environment)]

    async def connect(self, *environments: Environment | str) -> None:
        """Warm connections up (all environments if none named) so a first call pays no
        TLS handshake."""
        for env in environments or tuple(Environment):
            await self.sender(env).connect()

    async def aclose(self) -> None:
        for sender in self._senders.values():
            sender.close()

    def address(self, device: dict[str, Any], kind: PushKind) -> dict[str, Any] | None:
        environment = device.get("apns_environment", "production")
        if kind is PushKind.MISSED_ALERT:
            if not device.get("alert_token"):
                return None
            return {"token": device["alert_token"], "environment": environment, "bundle_id": device.get("bundle_id")}
        if not device.get("voip_token"):
            return None
        if kind is PushKind.INVITE:
            # Chosen before the push leaves, so the call's record names the invite's
            # apns-id even if this node dies while APNs answers.
            # The bundle too, so its cancellation goes to the same app, with the same key.
            return {
                "token": device["voip_token"],
                "environment": environment,
                "apns_id": str(uuid.uuid4()),
                "bundle_id": device.get("bundle_id"),
            }
        return {"token": device["voip_token"], "environment": environment, "bundle_id": device.get("bundle_id")}

    def request(self, push: Push, *, now: float | None = None) -> PushRequest:
        """The APNs request for `push`: headers and payload are this platform's."""
        address = push.address
        bundle_id = address.get("bundle_id") or self.bundle_id
        token, environment = address["token"], address["environment"]
        match push.kind:
            case PushKind.INVITE:
                assert push.caller is not None and push.status_url is not None
                return payloads.voip_invite(
                    bundle_id=bundle_id,
                    device_token=token,
                    environment=environment,
                    call_id=push.call_id,
                    caller=push.caller,
                    ring_deadline=push.deadline,
                    status_url=push.status_url,
                    custom=push.custom,
                    now=now,
                    apns_id=address.get("apns_id"),
                )
            case PushKind.CANCEL:
                assert push.reason is not None
                return payloads.call_cancellation(
                    bundle_id=bundle_id,
                    device_token=token,
                    environment=environment,
                    call_id=push.call_id,
                    reason=push.reason,
                    ring_deadline=push.deadline,
                    now=now,
                )
            case PushKind.ENDED:
                assert push.reason is not None
                return payloads.call_ended(
                    bundle_id=bundle_id,
                    device_token=token,
                    environment=environment,
                    call_id=push.call_id,
                    reason=push.reason,
                    deadline=push.deadline,
                    now=now,
                )
            case PushKind.MISSED_ALERT:
                assert push.caller is not None
                return payloads.missed_call_alert(
                    bundle_id=bundle_id,
                    device_token=token,
                    environment=environment,
                    call_id=push.call_id,
                    caller=push.caller,
                    deadline=push.deadline,
                    now=now,
                )

    async def notify(self, push: Push) -> PushResult:
        return await self.send(self.request(push))

    async def send(self, request: PushRequest) -> PushResult:
        started = time.perf_counter()
        attempts = 0
        status: int | None = None
        reason: str | None = None
        timestamp: int | None = None

        def finish(outcome: Outcome, cause: str | None = None, drop_token: TokenDrop | None = None) -> PushResult:
            result = PushResult(
                apns_id=request.apns_id,
                device_token=request.device_token,
                environment=request.environment,
                push_type=request.push_type,
                outcome=outcome,
                status=status,
                reason=reason,
                timestamp=timestamp,
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=attempts,
                likely_cause=cause,
                drop_token=drop_token,
                app=bundle_of(request.topic),
            )
            if outcome != Outcome.ACCEPTED:
                log.info(
                    "apns push not accepted",
                    apns_id=request.apns_id,
                    environment=str(request.environment),
                    push_type=str(request.push_type),
                    outcome=str(outcome),
                    status=status,
                    reason=reason,
                    attempts=attempts,
                    token_tail=request.device_token[-8:],
                )
            return result

        refused = payloads.check(request)
        if refused is not None:
            reason = refused[0]
            return finish(Outcome.REJECTED, refused[1])

        sender = self._senders[request.environment]
        loop = asyncio.get_running_loop()
        end = loop.time() + (request.deadline - time.time())
        base_headers = sender.headers(request)
        cause: str | None = None
        backoffs = 0
        for _ in range(self.config.max_attempts * 2):
            if loop.time() >= end:
                return finish(Outcome.EXPIRED, "the deadline passed before APNs accepted the push")
            if attempts >= self.config.max_attempts:
                break
            authorization = self.tokens.header() if self.tokens else None
            headers = [*base_headers, (b"authorization", authorization.encode())] if authorization else base_headers
            answer, connection = await sender.attempt(headers, request.payload, end, self.config.response_timeout)
            if answer is None:
                return finish(Outcome.EXPIRED, "the deadline passed before APNs accepted the push")
            if isinstance(answer, CutByDeadline):
                attempts += 1
                if status is None:
                    reason = answer.reason
                return finish(Outcome.EXPIRED, "the deadline passed before APNs answered the last attempt")
            if isinstance(answer, AttemptFailure):
                if not isinstance(answer, NotSent) and not isinstance(answer, ConnectFailed):
                    attempts += 1
                reason, status = answer.reason, None
                cause = "no answer from APNs (connection lost, reset or unresponsive)"
                if answer.unsent and not isinstance(answer, ConnectFailed):
                    continue  # APNs never saw it: go again at once, on another connection
            else:
                attempts += 1
                status = answer.status
                reason, timestamp = answer.error()
                if reason == "ExpiredProviderToken" and self.tokens is not None and authorization is not None:
                    if connection is not None:
                        connection.retire()  # a new token on the old connection may be refused
                    if self.tokens.expired(authorization):
                        continue
                    return finish(Outcome.FAILED, likely_cause(request, status, reason))
                if reason in RETIRE_CONNECTION_REASONS and connection is not None:
                    connection.retire()
                verdict = judge(request, status, reason, timestamp)
                if verdict.outcome is not None:
                    return finish(verdict.outcome, verdict.likely_cause, verdict.drop_token)
                cause = verdict.likely_cause
            delay = self._rng.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2**backoffs))
            backoffs += 1
            if loop.time() + delay >= end:
                return finish(Outcome.EXPIRED, f"the deadline came before the next retry; {cause}")
            await asyncio.sleep(delay)
        return finish(Outcome.FAILED, f"gave up after {attempts} attempts; {cause}")
