"""A real HTTP/1.1 server on loopback for the webhook and call-hook tests: it keeps every
request it took, answers what the test says (a status, a JSON body, after a delay), and
can be stopped and started again on the same port, its open connections cut, as an app's
backend that goes down and comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


Answer = tuple[int, bytes]
Responder = Callable[[Received], Answer]


def ok(_: Received) -> Answer:
    return 204, b""


@dataclass
class HttpReceiver:
    respond: Responder = ok
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0  # every request, answered 2xx or not
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> HttpReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Down: no new connection is taken, and the open ones are cut."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """The first `count` requests, once they have come."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.received) >= count), timeout)
        return self.received[:count]

    async def wait_attempts(self, count: int, timeout: float = 10) -> None:
        """Until `count` requests came, whatever they were answered."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: self.attempts >= count), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(method, path, headers, body)
                async with self._arrived:
                    self.attempts += 1
                    self._arrived.notify_all()
                if self.delay:
                    await asyncio.sleep(self.delay)
                status, answer = self.respond(request)
                if 200 <= status < 300:
                    # Kept only once answered 2xx: what the sender may count as delivered.
                    async with self._arrived:
                        self.received.append(request)
                        self._arrived.notify_all()
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # the client went, or the receiver stopped under it
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
