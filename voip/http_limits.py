"""HTTP/1.1 limits that uvicorn's httptools protocol lacks: header size and count (431),
a deadline for the headers and one for the body (408), and the per-node connection cap
(uvicorn's `limit_concurrency`) answered in JSON and applied to WebSocket handshakes too.

llhttp, under httptools, parses headers of any size and count, and uvicorn starts no
timer before a connection's first response: a 30 MB header was answered 200 and a
half-sent request held its connection open forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from voip.settings import Settings

log = structlog.get_logger(__name__)

REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is in `refusal`."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 16384
    max_headers = 100
    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_bytes = 0
        self.header_count = 0
        self.in_headers = True
        self.refusal: tuple[int, str, str] | None = None
        self.deadline: asyncio.TimerHandle | None = None

    # Deadlines ------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self, what: str) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not (self.in_headers and cycle.response_complete):
            # Mid-answer, or answered without waiting for the body: a 408 would be a second answer.
            self.transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            # The app waits on a body that is not coming: it hears a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
        self._answer(408, "request_timeout", f"the request {what} did not arrive in time")

    # Connection -----------------------------------------------------------------------

    # Narrower than asyncio.Protocol's, as uvicorn's own HttpToolsProtocol declares it.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From the first byte of the connection: trickling a request never restarts it.
        self._arm(self.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        if self.in_headers:
            # Counted before parsing: httptools buffers a header until its end, so a
            # single endless header would otherwise grow in memory unseen.
            self.header_bytes += len(data)
        super().data_received(data)
        if self.refusal is None and self.in_headers and self.header_bytes > self.max_header_bytes:
            self._answer(431, "headers_too_large", "request headers exceed the size limit")

    def send_400_response(self, msg: str) -> None:
        if self.refusal is not None:  # our own callback stopped the parser
            status, error, message = self.refusal
            self.refusal = None
            self._answer(status, error, message)
            return
        super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol keeps its own pings from here
        super().handle_websocket_upgrade()

    # Parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.in_headers:  # a following request on a kept-alive connection
            self.in_headers = True
            self.header_bytes = 0
            self._arm(self.header_timeout, "headers")
        self.header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.max_headers:
            self._stop(431, "headers_too_large", "too many request headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._stop(431, "headers_too_large", "request headers exceed the size limit")
        self.in_headers = False
        self.header_bytes = 0
        # The same count as uvicorn's limit_concurrency, which lets WebSocket handshakes by.
        if len(self.connections) > self.max_connections:
            self._stop(503, "overloaded", "this node has too many connections; try another or retry")
        self._arm(self.body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # Answers --------------------------------------------------------------------------

    def _stop(self, status: int, error: str, message: str) -> None:
        self.refusal = (status, error, message)
        raise _Refused(error)

    def _answer(self, status: int, error: str, message: str) -> None:
        self._disarm()
        self.refusal = (status, error, message)  # nothing more is read on this connection
        body = orjson.dumps({"error": error, "message": message})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        if status == 503:
            head.append(b"retry-after: 1\r\n")
        head.append(b"connection: close\r\n\r\n")
        log.info("http.refused", status=status, error=error)
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def limited_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, with this node's limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.http_max_header_bytes,
            "max_headers": settings.http_max_headers,
            "header_timeout": settings.http_header_timeout,
            "body_timeout": settings.http_body_timeout,
            "max_connections": settings.http_max_connections,
        },
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config options for the HTTP limits, its own where it has them."""
    return {
        "http": limited_protocol(settings),
        "limit_concurrency": settings.http_max_connections + 1,
        "timeout_keep_alive": settings.http_keep_alive,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
    }
