"""A bare HTTP/2 client for what aioapns cannot send: malformed requests, pings, frame-level checks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
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
from h2.settings import SettingCodes

from apnsim import APNsSimulator, client_ssl_context


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def reason(self) -> str | None:
        return self.json["reason"] if self.body else None


@dataclass
class _PendingStream:
    future: asyncio.Future[RawResponse]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class RawH2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self._streams: dict[int, _PendingStream] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.settings_seen = asyncio.Event()
        self.max_concurrent_streams_history: list[int] = []
        self._ping_acks: asyncio.Queue[bytes] = asyncio.Queue()
        self._window_opened = asyncio.Event()
        self.window_updates = 0
        self._h2.initiate_connection()
        self._flush()
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, sim: APNsSimulator) -> RawH2Client:
        host, port = sim.endpoint.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=client_ssl_context(sim.ca_file), server_hostname="localhost"
        )
        return cls(reader, writer)

    @property
    def alpn_protocol(self) -> str | None:
        ssl_object = self._writer.get_extra_info("ssl_object")
        return ssl_object.selected_alpn_protocol() if ssl_object else None

    async def send(self, headers: list[tuple[str, str]], body: bytes = b"") -> int:
        """Open a stream and send the whole request, honouring the server's flow control."""
        stream_id = self._h2.get_next_available_stream_id()
        future = asyncio.get_running_loop().create_future()
        self._streams[stream_id] = _PendingStream(future)
        self._h2.send_headers(stream_id, headers, end_stream=not body)
        self._flush()
        offset = 0
        while offset < len(body):
            window = min(self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size)
            if window <= 0:
                self._window_opened.clear()
                await asyncio.wait_for(self._window_opened.wait(), 5.0)
                continue
            chunk = body[offset : offset + window]
            offset += len(chunk)
            self._h2.send_data(stream_id, chunk, end_stream=offset >= len(body))
            self._flush()
        return stream_id

    async def response(self, stream_id: int, timeout: float = 5.0) -> RawResponse:
        return await asyncio.wait_for(self._streams[stream_id].future, timeout)

    async def request(self, headers: list[tuple[str, str]], body: bytes = b"", timeout: float = 5.0) -> RawResponse:
        return await self.response(await self.send(headers, body), timeout)

    async def ping(self, data: bytes = b"apnsim!!", timeout: float = 5.0) -> bytes:
        self._h2.ping(data)
        self._flush()
        return await asyncio.wait_for(self._ping_acks.get(), timeout)

    async def close(self) -> None:
        self._reader_task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for event in self._h2.receive_data(data):
                    self._on_event(event)
                self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for pending in self._streams.values():
                if not pending.future.done():
                    pending.future.set_exception(ConnectionError("connection closed"))

    def _on_event(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self._streams[event.stream_id].headers = {str(k): str(v) for k, v in event.headers}
        elif isinstance(event, DataReceived):
            self._streams[event.stream_id].body.extend(event.data)
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            pending = self._streams[event.stream_id]
            response = RawResponse(int(pending.headers[":status"]), pending.headers, bytes(pending.body))
            if not pending.future.done():
                pending.future.set_result(response)
        elif isinstance(event, StreamReset):
            pending = self._streams[event.stream_id]
            if not pending.future.done():
                pending.future.set_exception(ConnectionError(f"stream reset {event.error_code}"))
        elif isinstance(event, RemoteSettingsChanged):
            changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_concurrent_streams_history.append(changed.new_value)
            self.settings_seen.set()
        elif isinstance(event, WindowUpdated):
            self.window_updates += 1
            self._window_opened.set()
        elif isinstance(event, PingAckReceived):
            self._ping_acks.put_nowait(event.ping_data)
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
