"""The status endpoint's pipe on a Redis Cluster (`REDIS_CLUSTER_NODES`).

On one Redis the status script goes through voip/redis_pipe.py: one pipelined connection,
hiredis, one EVALSHA a request. redis-py's cluster client costs that request its slot
lookup, a connection checkout and a retry wrapper per command (docs/benchmarks.md). This
pipe keeps the one round trip on a cluster: it reads the slot map (CLUSTER SLOTS), keeps
one pipelined connection per primary, and writes each EVALSHA to the primary that serves
the slot of its first key (every key of a script shares one hash tag).

What a cluster may answer, and what follows (`decide`, pure, like `SlotMap`):
- MOVED: the slot has another owner (a reshard, a failover): the map is read again, and
  the command goes once more, to the node named;
- ASK: the slot is half-migrated and the call's keys have gone: ASKING and the command to
  the node named, once; the map stays;
- NOSCRIPT: that primary's script cache is empty (a promoted replica, a restart, SCRIPT
  FLUSH): SCRIPT LOAD there, and the command once more;
- TRYAGAIN: a migration has split the call's keys for a moment: again shortly, until
  the command timeout;
- CLUSTERDOWN, LOADING, MASTERDOWN, or more than MAX_REDIRECTS redirections: Redis is
  unavailable (503).
A connection refused or dropped (a primary killed) reads the map again from any node that
answers and tries again, until the command timeout; then the request gets its 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import OutOfMemoryError

from voip.redis_pipe import _expire, _Protocol, command, reply_error

Node = tuple[str, int]  # host, port

SLOTS = REDIS_CLUSTER_HASH_SLOTS
# Redirections (and script loads) one request may follow: more means a cluster whose
# nodes disagree, which a retry now will not settle.
MAX_REDIRECTS = 5
# Seconds between tries while a slot's primary cannot be reached (a failover under way):
# the first, and the longest.
PAUSE_FIRST, PAUSE_LONGEST = 0.05, 0.5
TRY_AGAIN_PAUSE = 0.02
_ASKING = command("ASKING")
_CLUSTER_SLOTS = command("CLUSTER", "SLOTS")


# -- the pure part: the slot map, the cluster's answers --------------------------------


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which primary serves each slot; None where none is known."""

    owners: tuple[Node | None, ...]

    @classmethod
    def empty(cls) -> SlotMap:
        return cls((None,) * SLOTS)

    @classmethod
    def parse(cls, reply: Any, asked: Node) -> SlotMap:
        """From the CLUSTER SLOTS reply of node `asked`, as hiredis gives it:
        `[[start, end, [host, port, id, ...], replica, ...], ...]`. ValueError if malformed."""
        if not isinstance(reply, list):
            raise ValueError(f"CLUSTER SLOTS: not a list: {reply!r:.80}")
        owners: list[Node | None] = [None] * SLOTS
        for entry in reply:
            if not isinstance(entry, list) or len(entry) < 3:
                raise ValueError(f"CLUSTER SLOTS: not a slot range: {entry!r:.80}")
            start, end, primary = entry[:3]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < SLOTS):
                raise ValueError(f"CLUSTER SLOTS: not a slot range: {entry!r:.80}")
            owners[start : end + 1] = [_endpoint(primary, asked)] * (end - start + 1)
        return cls(tuple(owners))

    def primaries(self) -> list[Node]:
        """Each primary once, in slot order."""
        return list(dict.fromkeys(node for node in self.owners if node is not None))


def _endpoint(value: Any, asked: Node) -> Node | None:
    """A node of CLUSTER SLOTS, `[host, port, id, ...]`. Its host may be empty or NULL:
    "the host you asked" (a node that knows no name for itself); "?": unknown for now."""
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError(f"CLUSTER SLOTS: not a node: {value!r:.80}")
    host, port = value[:2]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"CLUSTER SLOTS: not a port: {port!r:.80}")
    if host is None or host == b"":
        return asked[0], port
    if not isinstance(host, bytes):
        raise ValueError(f"CLUSTER SLOTS: not a host: {host!r:.80}")
    if host == b"?":
        return None
    return host.decode("ascii"), port


class Step(enum.Enum):
    MOVED = "moved"  # read the map again; once more, to the node named
    ASK = "ask"  # ASKING and the command, to the node named, once
    LOAD_SCRIPT = "load_script"  # SCRIPT LOAD on the node that answered, once more
    TRY_AGAIN = "try_again"  # once more, after a moment
    UNAVAILABLE = "unavailable"  # 503
    FAIL = "fail"  # the error is the answer


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    node: Node | None = None  # MOVED, ASK: where to


_UNAVAILABLE = frozenset({"CLUSTERDOWN", "LOADING", "MASTERDOWN"})


def decide(error: str, replied_by: Node) -> Decision:
    """What an error reply from `replied_by` calls for."""
    kind, _, rest = error.partition(" ")
    if kind in ("MOVED", "ASK"):
        # "MOVED 3999 127.0.0.1:6381"; an empty host is the host that answered.
        slot, _, address = rest.partition(" ")
        host, _, port = address.rpartition(":")
        if not (slot.isdigit() and int(slot) < SLOTS and port.isdigit() and 0 < int(port) < 65536):
            return Decision(Step.FAIL)
        return Decision(Step.MOVED if kind == "MOVED" else Step.ASK, (host or replied_by[0], int(port)))
    if kind == "NOSCRIPT":
        return Decision(Step.LOAD_SCRIPT)
    if kind == "TRYAGAIN":
        return Decision(Step.TRY_AGAIN)
    if kind in _UNAVAILABLE:
        return Decision(Step.UNAVAILABLE)
    return Decision(Step.FAIL)


# -- the asyncio edge ------------------------------------------------------------------


class ClusterPipe:
    """`evalsha` as RedisPipe's, on a cluster. `nodes`: some or all of its nodes, where the
    slot map is first read. `tls`: the context for every node (None: plain TCP), whose
    certificates are checked against `tls_server_name`, else each node's host."""

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        password: str | None = None,
        username: str | None = None,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("no cluster node to start from")
        self._startup = list(nodes)
        self._auth = (
            None if not password else command("AUTH", username, password) if username else command("AUTH", password)
        )
        # Seconds for a connection, a reply, and for a request to get through a failover.
        self._timeout = timeout
        self._tls = tls
        self._tls_server_name = tls_server_name if tls is not None else None
        self.slots = SlotMap.empty()
        self._generation = 0  # counts the maps read, so that one read serves every waiter
        self._reading: asyncio.Future[None] | None = None
        self._links: dict[Node, _Protocol] = {}
        self._dialing: dict[Node, asyncio.Lock] = {}

    async def evalsha(self, sha: str, script: bytes | str, keys: list[str], args: list[Any]) -> Any:
        packed = command("EVALSHA", sha, len(keys), *keys, *args)
        slot = key_slot(keys[0].encode())
        redirected_to: Node | None = None  # a MOVED or ASK answer's node, for the next try
        asking = False
        redirects = failures = 0
        deadline = 0.0
        while True:
            generation = self._generation
            node = redirected_to or self.slots.owners[slot]
            sent_on: _Protocol | None = None  # the connection this try's command went out on
            try:
                if node is None:
                    raise ConnectionError(f"no primary known for slot {slot}")
                link = sent_on = await self._link(node)
                if not asking:
                    return await self._wait(self._write(link, packed))
                # Written back to back, with no await between: no other request's command
                # may take the one-command ASKING allowance on this connection.
                ok, reply = self._write(link, _ASKING), self._write(link, packed)
                return (await asyncio.gather(self._wait(ok), self._wait(reply)))[1]
            except TimeoutError:
                # No reply in time: not sent again (it may have run), and the connection
                # given up, as redis-py's cluster client does: the next command dials again.
                # The commands of other requests written on it fail as this one does.
                if sent_on is not None:
                    if node is not None and self._links.get(node) is sent_on:
                        self._links.pop(node)
                    sent_on.time_out()
                raise
            except ConnectionError:  # refused, dropped, or no primary known for the slot
                loop = asyncio.get_running_loop()
                deadline = deadline or loop.time() + self._timeout
                pause = min(PAUSE_FIRST * 2 ** (failures - 1), PAUSE_LONGEST) if failures else 0.0
                if loop.time() + pause >= deadline:
                    raise
                failures += 1
                await asyncio.sleep(pause)
                with contextlib.suppress(ConnectionError, TimeoutError):  # tried again until the deadline
                    async with asyncio.timeout(deadline - loop.time()):
                        await self._refresh(generation)
                redirected_to, asking = None, False
            except hiredis.ReplyError as exc:
                assert node is not None  # a reply came from it
                if str(exc).startswith("OOM"):
                    raise OutOfMemoryError(str(exc)) from None
                decision = decide(str(exc), node)
                if decision.step is Step.FAIL:
                    raise reply_error(exc) from None
                redirects += decision.step is not Step.TRY_AGAIN
                if decision.step is Step.UNAVAILABLE or redirects > MAX_REDIRECTS:
                    raise ConnectionError(f"Redis Cluster: {exc}") from exc
                if decision.step is Step.MOVED:
                    with contextlib.suppress(ConnectionError, TimeoutError):  # the node named is tried anyway
                        async with asyncio.timeout(self._timeout):
                            await self._refresh(generation)
                    redirected_to, asking = decision.node, False
                elif decision.step is Step.ASK:
                    redirected_to, asking = decision.node, True
                elif decision.step is Step.LOAD_SCRIPT:
                    await self._wait(self._write(link, command("SCRIPT", "LOAD", script)))
                else:  # TRY_AGAIN, until the deadline
                    loop = asyncio.get_running_loop()
                    deadline = deadline or loop.time() + self._timeout
                    if loop.time() + TRY_AGAIN_PAUSE >= deadline:
                        raise ConnectionError(f"Redis Cluster: {exc}") from exc
                    await asyncio.sleep(TRY_AGAIN_PAUSE)

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        links, self._links = self._links, {}
        for link in links.values():
            if link.transport is not None:
                link.transport.close()

    # -- inside --------------------------------------------------------------------
    def _write(self, link: _Protocol, command: bytes) -> asyncio.Future[Any]:
        return link.send(command)

    async def _wait(self, future: asyncio.Future[Any]) -> Any:
        expiry = future.get_loop().call_later(self._timeout, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    async def _link(self, node: Node) -> _Protocol:
        link = self._links.get(node)
        if link is not None and link.transport is not None:
            return link
        async with self._dialing.setdefault(node, asyncio.Lock()):
            link = self._links.get(node)
            if link is None or link.transport is None:
                link = self._links[node] = await self._dial(node)
            return link

    async def _dial(self, node: Node) -> _Protocol:
        host, port = node
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, link = await loop.create_connection(
                    _Protocol, host, port, ssl=self._tls, server_hostname=self._tls_server_name
                )
        except TimeoutError:  # an OSError too, but no reason worth a message
            raise TimeoutError(f"no connection to Redis at {host}:{port} in {self._timeout} s") from None
        except OSError as exc:  # refused, reset, TLS refused
            raise ConnectionError(f"Redis unreachable at {host}:{port}: {exc.strerror or exc}") from exc
        if self._auth is not None:
            try:
                await self._wait(self._write(link, self._auth))
            except BaseException:
                if link.transport is not None:
                    link.transport.close()
                raise
        return link

    async def _refresh(self, seen: int) -> None:
        """The slot map read again, unless it was read since map `seen` was current;
        concurrent callers share one read."""
        if self._generation != seen:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_slots())
            # Read by whoever still waits; nobody may, and that is no error worth a log.
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(self._reading)

    async def _read_slots(self) -> None:
        """From the first node that answers: the primaries known, then the nodes given."""
        problems = []
        for node in dict.fromkeys([*self.slots.primaries(), *self._startup]):
            try:
                reply = await self._wait(self._write(await self._link(node), _CLUSTER_SLOTS))
                slots = SlotMap.parse(reply, node)
            except (ConnectionError, TimeoutError, ValueError, hiredis.ReplyError) as exc:
                problems.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            self.slots, self._generation = slots, self._generation + 1
            primaries = set(slots.primaries())
            for gone in [other for other in self._links if other not in primaries]:
                link = self._links.pop(gone)
                if link.transport is not None:  # a replica asked for the map, a demoted primary
                    link.transport.close()
            return
        raise ConnectionError(f"no cluster node gave its slot map: {'; '.join(problems)}")
