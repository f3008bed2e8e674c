"""A lean, pipelined Redis connection for the one command on the hottest path.

The call-status endpoint makes one EVALSHA per request. Through redis-py that costs
about 220 µs of CPU (command building, retry and timeout wrappers, pool checkout); the
same command written straight to a socket and parsed by hiredis costs about 60 µs
(docs/benchmarks.md). Everything else in the service uses redis-py; this covers only
what the status endpoint needs: EVALSHA, with SCRIPT LOAD on NOSCRIPT.

Requests from concurrent handlers share one connection and go out back to back;
Redis answers in order, so each reply resolves the oldest waiting future.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url


def _command(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            if future.done():  # its caller gave up; the reply still had to be consumed
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("Redis connection lost"))


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no reply from Redis in time"))


class RedisPipe:
    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self._options = parse_url(url)
        # Seconds to wait for a reply: a stopped Redis must cost a 503, not a hung request.
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            return protocol
        async with self._connecting:
            if self._protocol is not None and self._protocol.transport is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            options = self._options
            try:
                async with asyncio.timeout(self._timeout):
                    if "path" in options:
                        _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
                    else:
                        _, protocol = await loop.create_connection(
                            _Protocol, options.get("host", "127.0.0.1"), options.get("port", 6379)
                        )
            except OSError as exc:  # refused, or the socket file gone with its server
                raise ConnectionError(f"Redis unreachable: {exc.strerror or exc}") from exc
            setup: list[bytes] = []
            if options.get("password"):
                user = options.get("username")
                auth = ("AUTH", user, options["password"]) if user else ("AUTH", options["password"])
                setup.append(_command(*auth))
            if options.get("db"):
                setup.append(_command("SELECT", options["db"]))
            self._protocol = protocol
            for command in setup:
                await self._send(protocol, command)
            return protocol

    async def _send(self, protocol: _Protocol, command: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if protocol.transport is None:
            raise ConnectionError("Redis connection lost")
        protocol.waiting.append(future)
        protocol.transport.write(command)
        if self._timeout is None:
            return await future
        expiry = future.get_loop().call_later(self._timeout, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    async def evalsha(self, sha: str, script: bytes | str, keys: list[str], args: list[Any]) -> Any:
        command = _command("EVALSHA", sha, len(keys), *keys, *args)
        try:
            protocol = await self._connection()
            return await self._send(protocol, command)
        except ConnectionError:
            # Redis restarted or the socket dropped: one fresh connection, one more try.
            protocol = await self._connection()
            return await self._send(protocol, command)
        except hiredis.ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._send(protocol, _command("SCRIPT", "LOAD", script))
        return await self._send(protocol, command)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
