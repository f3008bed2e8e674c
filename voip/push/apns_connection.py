"""One HTTP/2 connection to APNs: aioapns's protocol with its gaps closed.

We keep aioapns's TLS dialling, pool membership, stream-id allocation and
MAX_CONCURRENT_STREAMS handling, and replace what it gets wrong for VoIP pushes:

* it closes a connection after 10 s idle, so a sporadic call pays a TLS handshake:
  we never close for idleness and send an HTTP/2 PING every `ping_interval`
  instead; an unanswered PING marks the path dead and closes it;
* it never returns flow-control credit for DATA it receives, so ~64 KB of error
  bodies stall the connection for good: we acknowledge every DATA frame;
* it hands requests that were in flight on a dead connection back to its pool,
  which writes them again: here a request is written once, and its failure comes
  back to the caller, who alone decides on another attempt;
* after a GOAWAY the connection stays in the pool until the socket closes, and a
  send in that window raises h2's ProtocolError: a connection that got GOAWAY (or
  that we gave up on) reports itself busy, so the pool never hands it out again;
* it resolves a failed request only on a DATA frame with a reason and ignores
  RST_STREAM, so either can leave a request waiting for ever: here every stream
  ends with its response, its reset or the connection's end.

And we drive h2 more cheaply than its defaults (`lean_h2`), which were most of a push's
CPU: the headers we build need no validation, the provider token is indexed once instead
of Huffman-coded into every request, and values unique to one push are sent as plain
literals.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from aioapns.connection import APNsTLSClientProtocol, ChannelPool
from aioapns.exceptions import ConnectionClosed
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import NoAvailableStreamIDError, ProtocolError, TooManyStreamsError
from hpack import Encoder


class PlainLiterals(Encoder):
    """hpack's encoder, with literal values sent as they are rather than Huffman-coded.

    The literals left once the repeating headers are indexed are the ones unique to a
    push (its path, apns-id, expiration, collapse id: hex, digits and a UUID), which
    Huffman coding shrinks by a fifth at the price of about a third of h2's CPU per
    push, in pure Python, on our side and again when APNs decodes them."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


def lean_h2(conn: H2Connection) -> None:
    """Drive `conn` (before it sends anything) the cheap way for our requests:

    * no outbound header validation or normalisation: `APNsSender.headers` builds every
      request from fixed, lower-case names in the right order, and h2's checks cost
      more than the encoding;
    * so `authorization` is not made never-indexed (h2's normalisation does that to
      every authorization header): the provider token, the same for every push for up
      to an hour, goes into the HPACK table once instead of being Huffman-coded into
      every request (~200 bytes each). HPACK only ever matches a whole value, and the
      token is a signed JWT, so indexing it offers nothing to guess at; and only our
      own requests share this connection's table;
    * `PlainLiterals` for the values unique to each push.
    """
    conn.config.validate_outbound_headers = False
    conn.config.normalize_outbound_headers = False
    conn.encoder = PlainLiterals()


class AttemptFailure(Exception):
    """An attempt ended without an answer from APNs."""

    reason = "ConnectionLost"
    unsent = False
    """True when APNs certainly did not process the request, so it may go again at once."""


class NotSent(AttemptFailure):
    reason = "NotSent"
    unsent = True


class DeadlinePassed(NotSent):
    reason = "DeadlinePassed"


class Unprocessed(AttemptFailure):
    """GOAWAY named a last stream below ours, or the stream was refused."""

    reason = "GoAway"
    unsent = True


class ConnectionLost(AttemptFailure):
    reason = "ConnectionLost"


class StreamResetByPeer(AttemptFailure):
    reason = "StreamReset"


@dataclass(slots=True)
class Response:
    status: int
    apns_id: str | None
    body: bytes

    def error(self) -> tuple[str | None, int | None]:
        """APNs's `reason` and, for 410, `timestamp` (ms)."""
        if not self.body:
            return None, None
        try:
            data = json.loads(self.body)
        except ValueError:
            return None, None
        if not isinstance(data, dict):
            return None, None
        reason = data.get("reason")
        timestamp = data.get("timestamp")
        return (
            str(reason) if reason is not None else None,
            int(timestamp) if isinstance(timestamp, (int, float)) else None,
        )


class StreamSlots(ChannelPool):
    """aioapns's stream-slot semaphore with a bound that follows MAX_CONCURRENT_STREAMS.

    aioapns's setter adds the raised bound back one `release()` at a time, and each
    release is clamped to the old bound: a connection that got APNs's initial limit
    of 1 while a request was in flight stays at one or two concurrent streams for good,
    and the pool opens more connections instead. Lowering the bound below the streams
    in use makes the counter negative, which `Semaphore.locked()` reads as free.
    """

    @property
    def bound(self) -> int:
        return self._bound_value

    @bound.setter
    def bound(self, new_bound: int) -> None:
        in_use = self._bound_value - self._value
        self._bound_value = new_bound
        self._value = new_bound - in_use
        while self._value > 0 and any(not w.done() for w in self._waiters or ()):
            self._wake_up_next()

    def locked(self) -> bool:
        return self._value <= 0 or any(not w.cancelled() for w in self._waiters or ())


@dataclass(slots=True)
class _Stream:
    future: asyncio.Future[Response]
    status: int = 0
    apns_id: str | None = None
    body: bytearray = field(default_factory=bytearray)


class APNsConnection(APNsTLSClientProtocol):
    """Subclassed per sender with `APNS_SERVER`, `APNS_PORT` and the keepalive timings."""

    ping_interval: float = 30.0
    ping_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lean_h2(self.conn)
        self.free_channels = StreamSlots(1000)
        self.closing = False
        self.goaway_reason: str | None = None
        self.pings_acked = 0
        self._streams: dict[int, _Stream] = {}
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._pings_sent = 0
        self._window_opened = asyncio.Event()

    # keepalive instead of aioapns's idle close

    def refresh_inactivity_timer(self) -> None:
        # aioapns re-arms a 10 s close timer on every write; an idle connection
        # is what we want to keep.
        pass

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    def _ping(self) -> None:
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        self._pings_sent += 1
        self.conn.ping(struct.pack(">Q", self._pings_sent))
        self.flush()
        if self._ping_deadline is None:
            self._ping_deadline = self.loop.call_later(self.ping_timeout, self._ping_lost)
        self._schedule_ping()

    def _ping_lost(self) -> None:
        self._ping_deadline = None
        self.abandon()

    def _on_ping_ack(self) -> None:
        self.pings_acked += 1
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None

    # sending

    @property
    def is_busy(self) -> bool:
        return self.closing or self.free_channels.is_busy

    async def open_stream(
        self, headers: list[tuple[bytes, bytes]], body: bytes, *, not_after: float | None = None
    ) -> asyncio.Future[Response]:
        """Write one request, unless the loop's clock is past `not_after`; the future
        resolves with its response or an AttemptFailure."""
        while True:
            try:
                stream_id = await self.free_channels.acquire()
            except NoAvailableStreamIDError:
                self.retire()
                raise NotSent("stream ids exhausted") from None
            except ConnectionClosed:  # aioapns fails waiters for a slot when the connection dies
                raise NotSent("connection closed") from None
            # No await from here to the write: aioapns hands out stream ids in order and
            # h2 refuses an id lower than one already opened.
            if self.closing or self.transport is None or self.transport.is_closing():
                self.free_channels.release()
                raise NotSent("connection closing")
            if not_after is not None and self.loop.time() >= not_after:
                self.free_channels.release()
                raise DeadlinePassed("deadline")
            if len(body) > self.conn.outbound_flow_control_window:
                # A burst has used APNs's connection window; its WINDOW_UPDATE is on the way.
                self.free_channels.release()
                self._window_opened.clear()
                await self._window_opened.wait()
                continue
            try:
                self.conn.send_headers(stream_id, headers)
                break
            except TooManyStreamsError:
                # The slot was taken before APNs's SETTINGS lowered the limit to 1 on
                # a new connection: give it back and queue for a real one.
                self.free_channels.release()
            except ProtocolError as exc:
                self.free_channels.release()
                self.retire()
                raise NotSent(type(exc).__name__) from None
        try:
            self.conn.send_data(stream_id, body, end_stream=True)
        except ProtocolError as exc:
            # Headers without END_STREAM are not a request APNs will act on.
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.flush()
            self.free_channels.release()
            raise NotSent(type(exc).__name__) from None
        future: asyncio.Future[Response] = self.loop.create_future()
        self._streams[stream_id] = _Stream(future)
        self.flush()
        return future

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # receiving

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.flush()
            self.abandon()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                self._on_headers(event)
            elif isinstance(event, DataReceived):
                self._on_data(event)
            elif isinstance(event, StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, StreamReset):
                self._on_reset(event)
            elif isinstance(event, WindowUpdated):
                self._window_opened.set()
            elif isinstance(event, RemoteSettingsChanged):
                # h2 types the keys int, aioapns SettingCodes; h2 gives SettingCodes for known ones.
                self.on_remote_settings_changed(event.changed_settings)  # type: ignore[arg-type]
                self._window_opened.set()
            elif isinstance(event, ConnectionTerminated):
                self._on_goaway(event)
            elif isinstance(event, PingAckReceived):
                self._on_ping_ack()
        self.flush()

    def _on_headers(self, event: ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is None or event.headers is None:
            return
        for name, value in event.headers:
            key = name if isinstance(name, bytes) else name.encode()
            if key == b":status":
                stream.status = int(value)
            elif key == b"apns-id":
                stream.apns_id = value.decode() if isinstance(value, bytes) else value

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id or 0
        stream = self._streams.get(stream_id)
        if stream is not None and event.data:
            stream.body += event.data
        if event.flow_controlled_length:
            # Credit back at once: APNs bodies are tiny and already in memory.
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)

    def _on_end(self, stream_id: int | None) -> None:
        stream = self._streams.pop(stream_id or 0, None)
        self.free_channels.release()
        if stream is not None and not stream.future.done():
            stream.future.set_result(Response(stream.status, stream.apns_id, bytes(stream.body)))
        self._close_if_drained()

    def _on_reset(self, event: StreamReset) -> None:
        stream = self._streams.pop(event.stream_id or 0, None)
        self.free_channels.release()
        if stream is not None and not stream.future.done():
            failure: AttemptFailure = (
                Unprocessed("REFUSED_STREAM")
                if event.error_code == ErrorCodes.REFUSED_STREAM
                else StreamResetByPeer(str(event.error_code))
            )
            stream.future.set_exception(failure)
        self._close_if_drained()

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        self.closing = True
        try:
            self.goaway_reason = json.loads(event.additional_data or b"{}").get("reason")
        except (ValueError, AttributeError):
            self.goaway_reason = None
        last = event.last_stream_id or 0
        # Streams above last_stream_id were not processed (RFC 9113 §6.8): safe to
        # send again. Those at or below it may still be answered, so let them drain.
        for stream_id in [s for s in self._streams if s > last]:
            stream = self._streams.pop(stream_id)
            if not stream.future.done():
                stream.future.set_exception(Unprocessed(f"GOAWAY {self.goaway_reason}"))
        self._close_if_drained()

    # ending

    def retire(self) -> None:
        """Take no new streams; close once the ones in flight are answered."""
        self.closing = True
        self._close_if_drained()

    def abandon(self) -> None:
        """Drop the connection now (no TLS goodbye: the path may be dead). Used when a
        stream or a PING went unanswered: the connection is suspect, and dropping it is
        our best way to make sure an abandoned request cannot land later."""
        self.closing = True
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()

    def _close_if_drained(self) -> None:
        if self.closing and not self._streams:
            self.close()

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._ping_deadline):
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self.closing = True
        self._cancel_timers()
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timers()
        self._window_opened.set()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(ConnectionLost(str(exc) if exc else "closed"))
        super().connection_lost(exc)
