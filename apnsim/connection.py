"""One client connection: asyncio at the edge, the h2 state machine inside."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from apnsim.auth import ConnectionAuth

MAX_BUFFERED_BODY = 1 << 20
"""Bytes of a request body kept; beyond that the body is counted but not stored."""


@dataclass
class ConnectionInfo:
    """What tests may assert about a connection."""

    id: int
    peer: tuple[str, int] | None
    opened_at: float
    alpn_protocol: str | None = None
    streams: int = 0
    stream_limit: int = 0
    """MAX_CONCURRENT_STREAMS most recently advertised."""
    closed_at: float | None = None
    goaway_sent: bytes | None = None
    """Additional data of the GOAWAY the simulator sent, if any."""
    goaway_received: bool = False
    reset: bool = False
    auth: ConnectionAuth = field(default_factory=ConnectionAuth)

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass
class IncomingStream:
    stream_id: int
    headers: list[tuple[str, str]]
    received_at: float
    body: bytearray = field(default_factory=bytearray)
    body_length: int = 0

    def pseudo(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")

    @property
    def regular_headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers if not k.startswith(":")]


StreamHandler = Callable[["APNsConnection", IncomingStream], Coroutine[Any, Any, None]]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


class APNsConnection(asyncio.Protocol):
    def __init__(
        self,
        info: ConnectionInfo,
        handler: StreamHandler,
        unauthenticated_stream_limit: int,
        stream_limit: int,
        on_closed: Callable[[APNsConnection], None],
        clock: Callable[[], float],
    ) -> None:
        self.info = info
        self._handler = handler
        self._unauthenticated_stream_limit = unauthenticated_stream_limit
        self._stream_limit = stream_limit
        self._on_closed = on_closed
        self._clock = clock
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True))
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, IncomingStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._answered: set[int] = set()
        self._goaway_last_stream: int | None = None
        self._closing = False
        self.closed = asyncio.Event()

    # asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (uvicorn serves on uvloop) are
        # asyncio.Transport-alike, not subclasses.
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self.info.alpn_protocol = ssl_object.selected_alpn_protocol() if ssl_object else None
        self.info.peer = transport.get_extra_info("peername")
        # APNs allows one stream until a valid provider token was seen. The limit
        # goes in a SETTINGS frame of its own right after h2's preface, so that it
        # binds once the client acknowledges it (RFC 9113 §6.5.3) instead of
        # killing streams a client opened before it could read the preface.
        self._h2.initiate_connection()
        self._h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self._unauthenticated_stream_limit})
        self.info.stream_limit = self._unauthenticated_stream_limit
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self._h2.receive_data(data)
        except ProtocolError:
            # h2 has queued a GOAWAY(PROTOCOL_ERROR); send it and hang up.
            self._flush()
            self._close_transport()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, DataReceived):
                self._on_data(event)
            elif isinstance(event, StreamEnded):
                self._on_stream_ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.info.goaway_received = True
                self._flush()
                self._close_transport()
                return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self.info.closed_at is None:
            self.info.closed_at = self._clock()
        for task in self._tasks:
            task.cancel()
        self.closed.set()
        self._on_closed(self)

    # h2 events

    def _on_request(self, event: RequestReceived) -> None:
        assert event.stream_id is not None and event.headers is not None
        headers = [(_text(k).lower(), _text(v)) for k, v in event.headers]
        self._streams[event.stream_id] = IncomingStream(event.stream_id, headers, self._clock())
        self.info.streams += 1

    def _on_data(self, event: DataReceived) -> None:
        assert event.stream_id is not None and event.data is not None
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.body_length += len(event.data)
            if len(stream.body) < MAX_BUFFERED_BODY:
                stream.body.extend(event.data)
        # Give the window back right away: the body is buffered in memory regardless.
        if event.flow_controlled_length:
            try:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            except ProtocolError:
                pass

    def _on_stream_ended(self, stream_id: int | None) -> None:
        assert stream_id is not None
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        task = asyncio.get_running_loop().create_task(self._handler(self, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # what the request pipeline may do with the connection

    @property
    def is_open(self) -> bool:
        return not self._closing and self._transport is not None

    def respond(self, stream_id: int, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bool:
        """Send a complete response; ``False`` if the stream or connection is gone."""
        if not self.is_open:
            return False
        response_headers = [(":status", str(status)), *headers]
        if body:
            response_headers.append(("content-length", str(len(body))))
        try:
            self._h2.send_headers(stream_id, response_headers, end_stream=not body)
            if body:
                self._h2.send_data(stream_id, body, end_stream=True)
        except ProtocolError:
            return False
        self._answered.add(stream_id)
        self._flush()
        return True

    def allow_full_concurrency(self) -> None:
        if self.info.stream_limit != self._stream_limit and self.is_open:
            self._h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self._stream_limit})
            self.info.stream_limit = self._stream_limit
            self._flush()

    def go_away(
        self, reason: str | None, error_code: int = ErrorCodes.NO_ERROR, last_stream_id: int | None = None
    ) -> None:
        """Send GOAWAY (with ``{"reason": ...}`` like APNs) and close the connection."""
        if not self.is_open:
            return
        if last_stream_id is None:
            last_stream_id = max(self._answered, default=0)
        additional_data = json.dumps({"reason": reason}, separators=(",", ":")).encode() if reason else b""
        try:
            self._h2.close_connection(
                error_code=error_code, additional_data=additional_data, last_stream_id=last_stream_id
            )
        except ProtocolError:
            pass
        self.info.goaway_sent = additional_data
        self._goaway_last_stream = last_stream_id
        self._flush()
        self._close_transport()

    def will_process(self, stream_id: int) -> bool:
        """False for a stream above the last one a GOAWAY promised to process: the client
        retries it elsewhere, so processing it too would deliver the push twice."""
        return self._goaway_last_stream is None or stream_id <= self._goaway_last_stream

    def reset(self) -> None:
        """Drop the TCP connection abruptly: RST instead of FIN, no TLS close_notify."""
        if self._transport is None or self._closing:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.info.reset = True
        self._closing = True
        self._transport.abort()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close_transport(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()
