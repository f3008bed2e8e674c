"""uvicorn's WebSocket protocol (`websockets-sansio`), leaner per connection.

An idle device socket is most of what a node holds, and uvicorn's protocol keeps, for each
connection, an asyncio.Queue of ASGI events (three deques and an Event's deque: about 3 KiB
before any event), an asyncio.Event for "writable" (another deque), and the handshake's
request and response, headers and all, for as long as the socket lives. This subclass keeps
the same behaviour with a list and a future in place of each queue and event, and lets the
handshake go once the socket is accepted, from its own attributes and from websockets'
parser (docs/benchmarks.md, the idle-socket row).

Used as uvicorn's `ws=` by `python -m voip run`, the demo, the bench nodes and the tests."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol

T = TypeVar("T")


class LeanQueue(Generic[T]):
    """What the protocol uses of asyncio.Queue (unbounded): put_nowait, get, empty."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            # Shielded: a getter cancelled while waiting leaves the future to the others.
            await asyncio.shield(self._waiter)
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class LeanFlag:
    """What the protocol uses of asyncio.Event: set, clear, wait, is_set."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> bool:
        while not self._set:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]
        writable = LeanFlag()
        writable.set()
        self.writable = writable  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Read only by the handshake, which is over: the request's and the response's
            # headers need not live as long as the socket.
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
            self._parse_frames_only()

    def _parse_frames_only(self) -> None:
        """websockets' server parser is a generator that reads the handshake, then runs the
        frame loop inside its own frame, which keeps the request alive. Waiting for a first
        frame with nothing buffered (where a client that waited for the 101 always is), it
        is swapped for the frame loop alone, as websockets itself swaps in discard(); a
        client already part-way into a frame keeps the parser it has."""
        conn = self.conn
        frames = getattr(conn.parser, "gi_yieldfrom", None)
        waiting = getattr(frames, "gi_yieldfrom", None)
        code = getattr(waiting, "gi_code", None)
        if code is not None and code.co_name == "at_eof" and not conn.reader.buffer:
            conn.parser = Protocol.parse(conn)
            next(conn.parser)  # start it: it waits for the first frame
