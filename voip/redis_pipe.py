"""A lean, pipelined Redis connection for the commands on the hottest paths.

The call-status endpoint makes one EVALSHA per request. Through redis-py that costs
about 220 µs of CPU (command building, retry and timeout wrappers, pool checkout); the
same command written straight to a socket and parsed by hiredis costs about 60 µs
(docs/benchmarks.md). `evalsha` is what the status endpoint and a push's bookkeeping
need: EVALSHA, with SCRIPT LOAD on NOSCRIPT. `execute` is what a call's scripts and
pipelines need (voip/stores/calls.py, limits.py, voip/bus.py): any commands at once, their
replies in order, as redis-py's pipeline with the node's retry would give them
(voip/redis_pool.py): an error reply is redis-py's exception, in its place; a dropped
connection means one reconnect and the whole batch sent again; a timeout is not retried.

Requests from concurrent handlers share one connection and go out back to back;
Redis answers in order, so each reply resolves the oldest waiting future.

It reads a `redis://`, `rediss://` or `unix://` URL by redis-py's own rules, so that it
reaches Redis exactly as the node's pool does: TLS with the `ssl_*` query parameters
(redis-py builds the context), the URL's username and password, and its
`socket_timeout` and `socket_connect_timeout` over the node's own timeout.

A TLS context may be given instead (`tls`, and `server_hostname` to check the
certificate against another name than the host): the node's, when TLS is set by
REDIS_TLS rather than by the URL (voip/redis_tls.py).

Behind Sentinel the pipe is given `locate`, which asks the Sentinels for the master on
every (re)connect, and `master_only`: a fresh connection that finds a replica (ROLE), or
a reply of READONLY (a master demoted under us), drops the connection and retries once.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

# How to reach Redis: {"host", "port"} or {"path"}, optional "password", "username", "db".
Address = dict[str, Any]
# A command as written (`command()`) and, for an EVALSHA, its script's source: loaded on
# NOSCRIPT (None: any other command).
Packed = tuple[bytes, bytes | str | None]


def reply_error(error: hiredis.ReplyError) -> Exception:
    """The exception redis-py raises for this error reply (ReadOnlyError, OutOfMemoryError,
    BusyLoadingError, NoScriptError, ResponseError...): callers tell Redis being
    unavailable (voip/redis_pool.py: UNAVAILABLE) from a refusal by the same classes."""
    return BaseParser.parse_error(str(error))  # type: ignore[no-untyped-call,no-any-return]  # redis-py's, untyped


def command(*parts: bytes | str | int | float) -> bytes:
    """A command in Redis's protocol, by hiredis (numbers written as redis-py writes them;
    a third of the CPU of doing it here)."""
    return cast(bytes, hiredis.pack_command(parts))  # type: ignore[arg-type]  # hiredis stubs it for a 1-tuple


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        # Commands written by this turn of the event loop, sent as one write at its end:
        # the requests a busy node handles together cost one syscall here, and Redis one
        # read, instead of one each.
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue `command`; its reply resolves the future. Commands queued back to back,
        with no await between, reach Redis back to back (ASKING and its command)."""
        if self.transport is None:
            raise ConnectionError("Redis connection lost")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        if not self._outgoing:
            future.get_loop().call_soon(self._flush)
        self._outgoing.append(command)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None:  # else connection_lost has failed their futures
            self.transport.write(b"".join(outgoing))

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

    def time_out(self) -> None:
        """Close the connection after a reply waited the whole timeout. The commands already
        written fail as that one does, with TimeoutError: Redis may yet read and run them
        (it reads a closed TCP socket to its end), so they must not be sent again. Those
        not written yet fail as on a lost connection: they may be."""
        transport, self.transport = self.transport, None
        written = len(self.waiting) - len(self._outgoing)
        for _ in range(written):
            _expire(self.waiting.popleft())
        self.connection_lost(None)
        if transport is not None:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._outgoing = []
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("Redis connection lost"))


def _tls_context(options: Address) -> ssl.SSLContext | None:
    """The context redis-py's pool would use for these URL options (its defaults: the
    certificate and the host name checked), made now, so a missing file stops start-up."""
    if options.get("connection_class") is not SSLConnection:
        return None
    tls = {name: value for name, value in options.items() if name.startswith("ssl_")}
    return SSLConnection(**tls).ssl_context.get()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no reply from Redis in time"))


def _expire_all(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        _expire(future)


def _retrieved(attempt: asyncio.Future[Any]) -> None:
    """A connection attempt's failure, marked as seen: its waiters may all have gone."""
    if not attempt.cancelled():
        attempt.exception()


def _read_back(future: asyncio.Future[Any]) -> Any:
    """A resolved future's reply; an error reply as its exception, returned, not raised."""
    if future.cancelled():
        return asyncio.CancelledError()
    error = future.exception()
    return error if error is not None else future.result()


class PipeClosed(ConnectionError):
    """The pipe was closed (the node stops): no connection is made for it any more."""

    def __init__(self) -> None:
        super().__init__("Redis pipe closed")


class RedisPipe:
    def __init__(
        self,
        url: str = "",
        *,
        password: str | None = None,
        locate: Callable[[], Awaitable[Address]] | None = None,
        master_only: bool = False,
        timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self._options: Address = dict(parse_url(url)) if url else {}
        if password and not self._options.get("password"):
            self._options["password"] = password
        self._locate = locate
        self._master_only = master_only
        # A context given (the node's, voip/redis_tls.py) wins over the URL's.
        self._tls = tls if tls is not None else _tls_context(self._options)
        self._server_hostname = server_hostname if self._tls is not None else None
        # Seconds to wait for a reply: a stopped Redis must cost a 503, not a hung request.
        # As in redis-py's from_url, a timeout in the URL wins over the node's.
        self._timeout: float | None = self._options.get("socket_timeout", timeout)
        self._connect_timeout: float | None = self._options.get("socket_connect_timeout", timeout)
        self._protocol: _Protocol | None = None
        self._dialing: asyncio.Future[_Protocol] | None = None
        self._closed = False

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            return protocol
        if self._closed:
            raise PipeClosed
        # One attempt at a time, shared by every request that finds no connection: each
        # waits one connect timeout at most, as each would on its own redis-py connection,
        # not its turn behind the others' attempts. Shielded: a request cancelled while
        # waiting does not cancel the attempt the others wait on.
        if self._dialing is None or self._dialing.done():
            self._dialing = asyncio.ensure_future(self._dial())
            self._dialing.add_done_callback(_retrieved)
        return await asyncio.shield(self._dialing)

    async def _dial(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                options = await self._locate() if self._locate is not None else self._options
                if self._closed:  # closed while the master was looked up: no connection to open
                    raise PipeClosed
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol,
                        options.get("host", "127.0.0.1"),
                        options.get("port", 6379),
                        ssl=self._tls,
                        server_hostname=self._server_hostname,
                    )
        except PipeClosed:
            raise
        except TimeoutError:  # an OSError too, but no reason worth a message
            raise TimeoutError(f"no connection to Redis in {self._connect_timeout} s") from None
        except RedisConnectionError as exc:  # no Sentinel knows a master right now
            raise ConnectionError(f"no Redis master: {exc}") from None
        except OSError as exc:  # refused, the socket file gone with its server, TLS refused
            raise ConnectionError(f"Redis unreachable: {exc.strerror or exc}") from exc
        setup: list[bytes] = []
        if options.get("password"):
            user = options.get("username")
            auth = ("AUTH", user, options["password"]) if user else ("AUTH", options["password"])
            setup.append(command(*auth))
        if options.get("db"):
            setup.append(command("SELECT", options["db"]))
        try:
            for setup_command in setup:
                await self._send(protocol, setup_command)
            if self._master_only:
                role = await self._send(protocol, command("ROLE"))
                if role[0] != b"master":  # the Sentinels' answer is already stale
                    raise ConnectionError("Redis at the master's address is a replica")
        except hiredis.ReplyError as exc:  # a wrong password, a database that is not there
            if protocol.transport is not None:
                protocol.transport.close()
            raise ConnectionError(f"Redis refused the connection: {exc}") from None
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
        if self._closed:
            if protocol.transport is not None:
                protocol.transport.close()
            raise PipeClosed
        self._protocol = protocol
        return protocol

    async def _send(self, protocol: _Protocol, command: bytes) -> Any:
        future = protocol.send(command)
        if self._timeout is None:
            return await future
        expiry = future.get_loop().call_later(self._timeout, _expire, future)
        try:
            return await future
        except TimeoutError:
            self._give_up(protocol, timed_out=True)
            raise
        finally:
            expiry.cancel()

    def _give_up(self, protocol: _Protocol, *, timed_out: bool = False) -> None:
        """Close `protocol`, if still open, so that the next command connects again (behind
        Sentinel, to the master named then); not a newer connection another request made
        meanwhile. For a demoted master, and for a connection that let a reply wait the whole
        timeout, as redis-py closes its connection on a timeout: not a socket that may never
        answer (a host gone without a reset). Commands still waiting on it fail as on a
        dropped connection; after a timeout, those already written fail with TimeoutError
        (`_Protocol.time_out`): not sent again."""
        if self._protocol is protocol:
            self._protocol = None
        if timed_out:
            protocol.time_out()
        elif protocol.transport is not None:
            protocol.transport.close()

    async def evalsha(self, sha: str, script: bytes | str, keys: list[str], args: list[Any]) -> Any:
        packed = command("EVALSHA", sha, len(keys), *keys, *args)
        # Each attempt can repair one thing: a lost connection, a demoted master, a cold script cache.
        for attempts_left in (2, 1, 0):
            try:
                protocol = await self._connection()
                return await self._send(protocol, packed)
            except ConnectionError:
                if not attempts_left:  # Redis restarted, failed over, or the socket dropped
                    raise
            except hiredis.ReplyError as exc:
                message = str(exc)
                if message.startswith("OOM"):
                    raise OutOfMemoryError(message) from None
                if not attempts_left or not message.startswith(("NOSCRIPT", "READONLY")):
                    raise reply_error(exc) from None
                if message.startswith("NOSCRIPT"):
                    await self._send(protocol, command("SCRIPT", "LOAD", script))
                else:  # a master demoted to replica while we held its connection
                    self._give_up(protocol)
        raise AssertionError("unreachable")

    async def execute(self, commands: list[Packed]) -> list[Any]:
        """`commands` written at once, back to back; their replies in order, an error reply
        as redis-py's exception in its place (what redis-py's pipeline gives with
        raise_on_error=False). Raises ConnectionError or TimeoutError when Redis is not
        there to answer.

        As redis-py's pipeline with the node's retry (voip/redis_pool.py): a connection
        that drops before every reply came (Redis restarted, the socket cut) is made again
        and the whole batch sent once more, so a command may run twice, and every command
        sent here must be one that may (the call scripts tell a resend of their own attempt
        apart: tests/resilience/test_resent_commands.py). No reply in time is not retried,
        as the commands may have run; the connection is given up (`_give_up`), and the
        other requests' commands already written on it fail with TimeoutError too. Behind
        Sentinel a reply of READONLY (a master demoted under us) counts as a dropped
        connection, as redis-py's Sentinel connection has it. An EVALSHA that met NOSCRIPT
        (a script cache emptied by a restart or a failover) did not run: its script is
        loaded and it runs again, after the rest, as batch() does through redis-py. A
        blocking command (WAIT) must not come here: it would hold up every other request's
        command on the shared connection."""
        if not commands:
            return []
        for attempts_left in (1, 0):
            try:
                protocol = await self._connection()
                replies = await self._send_many(protocol, [packed for packed, _ in commands])
            except ConnectionError:
                if not attempts_left:
                    raise
                continue
            if attempts_left and self._master_only and any(_demoted(reply) for reply in replies):
                self._give_up(protocol)
                continue
            break
        for index, ((packed, script), reply) in enumerate(zip(commands, replies, strict=True)):
            if not isinstance(reply, hiredis.ReplyError):
                continue
            if script is not None and str(reply).startswith("NOSCRIPT"):
                _, replies[index] = await self.execute([(command("SCRIPT", "LOAD", script), None), (packed, None)])
            else:
                replies[index] = reply_error(reply)
        return replies

    async def _send_many(self, protocol: _Protocol, commands: list[bytes]) -> list[Any]:
        """The replies to `commands`, in order, an error reply in its place; raises
        ConnectionError (the connection lost) or TimeoutError (no reply in time)."""
        futures = [protocol.send(one) for one in commands]
        # Redis answers in order: once the last reply is in, every reply is.
        last = futures[-1]
        expiry = None if self._timeout is None else last.get_loop().call_later(self._timeout, _expire_all, futures)
        try:
            await last
        except hiredis.ReplyError:
            pass
        except BaseException as exc:
            for future in futures:
                if future.done():
                    _read_back(future)  # retrieved: no "exception never retrieved" later
                else:  # its reply, if it comes, is read and dropped
                    future.cancel()
            if isinstance(exc, TimeoutError):
                self._give_up(protocol, timed_out=True)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
        return [_read_back(future) for future in futures]

    def close(self) -> None:
        # For good: a request still running as the node stops gets no new connection, and
        # an attempt under way closes its connection when it ends.
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


def _demoted(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY")


class StatusPipe(Protocol):
    """What the status endpoint needs of its connection: a RedisPipe on one Redis or
    Sentinel, a ClusterPipe (voip/redis_cluster_pipe.py) on a cluster."""

    async def evalsha(self, sha: str, script: bytes | str, keys: list[str], args: list[Any]) -> Any: ...

    def close(self) -> None: ...
