"""Redis busy, restarted, stopped or gone, and a node killed with -9 (issue 9, items 3
and 5). Every test runs against a real redis-server: the shared one where Redis stays up,
else one the test starts itself on a TCP port, and kills, stops or restarts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import ConnectionClosed

from apnsim import APNsSimulator
from tests.conftest import CLIENT_LIMITS, SECRET, RunningNode, make_settings, register, start_node
from tests.ops.conftest import place_call
from tests.ops.test_live import watch
from tests.ports import free_port
from tests.redis_process import RedisProcess
from tests.test_call_pushes import invites_for, phone
from voip import metrics
from voip.auth import Authenticator

pytestmark = pytest.mark.interop

AUTH = Authenticator(SECRET)


@pytest.fixture
def own_redis(redis_process: Callable[..., RedisProcess]) -> RedisProcess:
    return redis_process()


@pytest.fixture
async def own_node(own_redis: RedisProcess, prefix: str) -> AsyncIterator[Any]:
    """Starts in-process nodes on the test's own Redis; stops them at the end."""
    nodes: list[RunningNode] = []

    async def factory(**overrides: Any) -> RunningNode:
        running = await start_node(make_settings(own_redis.url, prefix, **overrides))
        nodes.append(running)
        return running

    yield factory
    for running in nodes:
        if not running.task.done():
            await running.stop()


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {AUTH.mint(user, 'device')}"}


async def put_devices(base_url: str, users: list[str]) -> list[httpx.Response]:
    """One PUT /v1/devices per user, all at once."""
    limits = httpx.Limits(max_connections=len(users), max_keepalive_connections=len(users))
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        return await asyncio.gather(
            *(
                http.put("/v1/devices/d1", json={"voip_token": uuid.uuid4().hex * 2}, headers=bearer(user))
                for user in users
            )
        )


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "2"
    body = response.json()
    assert (body["error"], body["retry_after"]) == ("unavailable", 2)


async def connect(ws_url: str, user: str, device: str = "d1") -> tuple[Any, str | int]:
    """A device socket: ("hello", socket) if accepted, else the close code it got."""
    socket = await websockets.connect(f"{ws_url}?device_id={device}", additional_headers=bearer(user))
    try:
        first = orjson.loads(await asyncio.wait_for(socket.recv(), 20))
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return socket, closed.rcvd.code
    assert first["type"] == "hello", first
    return socket, "hello"


async def numsub(client: aioredis.Redis, channels: list[str]) -> dict[str, int]:
    """PUBSUB SHARDNUMSUB: how many subscribers Redis counts on each channel."""
    counts: dict[str, int] = {}
    for start in range(0, len(channels), 200):
        reply = await client.pubsub_shardnumsub(*channels[start : start + 200])
        counts.update({name.decode() if isinstance(name, bytes) else name: count for name, count in reply})
    return counts


async def presence_left(redis: aioredis.Redis, node: RunningNode, users: list[str]) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hlen(node.node.stores.keys.presence(user))
        return sum(await pipe.execute())


async def eventually(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


# Item 3: a busy pool -------------------------------------------------------------------


async def test_600_concurrent_device_puts_on_a_small_pool_get_201_or_503_never_500(
    node_factory: Any, redis: aioredis.Redis
) -> None:
    # Three connections (one is the bus's subscription) for 600 requests at once, with
    # 50 ms to wait for one: most must be refused, and every refusal is a 503.
    node = await node_factory(redis_pool_size=3, redis_pool_timeout=0.05)
    users = [f"put-{i}" for i in range(600)]
    refused_before = metrics.REDIS_UNAVAILABLE.labels("http")._value.get()
    responses = await put_devices(node.base_url, users)

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[503] > 0, statuses  # the pool was too small: refusals, not errors
    assert metrics.REDIS_UNAVAILABLE.labels("http")._value.get() - refused_before == statuses[503]
    for response in responses:
        if response.status_code == 503:
            assert_unavailable(response)
    # A 201 is the truth: its device is in Redis.
    created = [u for u, r in zip(users, responses, strict=True) if r.status_code == 201]
    async with redis.pipeline(transaction=False) as pipe:
        for user in created:
            pipe.hexists(node.node.stores.keys.devices(user), "d1")
        assert all(await pipe.execute())
    # The storm over, the node answers as ever.
    [after] = await put_devices(node.base_url, ["put-after"])
    assert after.status_code == 201, after.text


async def test_concurrent_websocket_connects_on_a_small_pool_leak_no_subscription_or_presence(
    node_factory: Any, redis: aioredis.Redis
) -> None:
    node = await node_factory(redis_pool_size=3, redis_pool_timeout=0.05)
    users = [f"ws-{i}" for i in range(600)]
    outcomes = await asyncio.gather(*(connect(node.ws_url, user) for user in users))

    codes = Counter(code for _, code in outcomes)
    assert set(codes) <= {"hello", 1013}, codes
    assert codes[1013] > 0, codes
    accepted = [u for u, (_, code) in zip(users, outcomes, strict=True) if code == "hello"]
    refused = [u for u, (_, code) in zip(users, outcomes, strict=True) if code == 1013]
    channels = {u: node.node.bus.channel(u) for u in users}

    # A refused socket left nothing behind: no subscription (in Redis or in the bus),
    # no presence (at once, or by the next heartbeat if Redis was too busy to clear it).
    subscribed = await numsub(redis, list(channels.values()))
    assert [u for u in refused if subscribed[channels[u]]] == []
    assert [u for u in accepted if subscribed[channels[u]] != 1] == []
    assert node.node.bus.subscribed_users() == len(accepted)
    await eventually(lambda: _no_presence(redis, node, refused), 15, "presence of refused sockets not cleared")
    assert node.node.presence.held() == len(accepted)

    await asyncio.gather(*(socket.close() for socket, _ in outcomes))
    await eventually(lambda: _nothing_left(redis, node, users), 20, "state left after the sockets closed")
    # The storm over, a socket is accepted as ever, and subscribed.
    socket, code = await connect(node.ws_url, "ws-after")
    assert code == "hello"
    assert (await numsub(redis, [node.node.bus.channel("ws-after")]))[node.node.bus.channel("ws-after")] == 1
    await socket.close()


async def _no_presence(redis: aioredis.Redis, node: RunningNode, users: list[str]) -> bool:
    return await presence_left(redis, node, users) == 0


async def _nothing_left(redis: aioredis.Redis, node: RunningNode, users: list[str]) -> bool:
    bus, presence = node.node.bus, node.node.presence
    if bus.subscribed_users() or presence.held() or presence.pending_clears():
        return False
    if any((await numsub(redis, [bus.channel(u) for u in users])).values()):
        return False
    return await presence_left(redis, node, users) == 0


async def test_sockets_aborted_at_once_clear_their_presence_and_subscriptions(
    node_factory: Any, redis: aioredis.Redis
) -> None:
    # As in the issue: 2,000 sockets on a node with the default pool, dropped at once. The
    # cleanups then outnumber the pool; those that wait too long are left to the heartbeat.
    node = await node_factory()
    users = [f"abort-{i}" for i in range(2000)]
    sockets = []
    for start in range(0, len(users), 100):
        batch = await asyncio.gather(*(connect(node.ws_url, u) for u in users[start : start + 100]))
        assert {code for _, code in batch} == {"hello"}
        sockets += [socket for socket, _ in batch]
    assert await presence_left(redis, node, users) == len(users)

    for socket in sockets:  # no close frame, all at once: a network drop
        socket.transport.abort()
    await eventually(lambda: _nothing_left(redis, node, users), 30, "state left after the sockets dropped")
    assert await redis.exists(*(node.node.stores.keys.sockets(u) for u in users)) == 0, "open-socket counts left"


# Item 3: a restarted Redis ---------------------------------------------------------------


async def test_after_a_redis_restart_every_put_succeeds_once_readyz_is_green(
    own_redis: RedisProcess, own_node: Any
) -> None:
    node = await own_node()
    # Fill the pool with connections that the restart will leave dead.
    warm = await put_devices(node.base_url, [f"warm-{i}" for i in range(100)])
    assert {r.status_code for r in warm} == {201}
    async with httpx.AsyncClient(base_url=node.base_url, timeout=10, limits=CLIENT_LIMITS) as http:
        unknown = await http.get(f"/v1/calls/{uuid.uuid4()}/status", headers=bearer("warm-0"))
        assert unknown.status_code == 404

        own_redis.kill()
        own_redis.start()
        deadline = time.monotonic() + 20
        while (await http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            await asyncio.sleep(0.1)

        responses = await put_devices(node.base_url, [f"after-{i}" for i in range(200)])
        assert Counter(r.status_code for r in responses) == {201: 200}
        unknown = await http.get(f"/v1/calls/{uuid.uuid4()}/status", headers=bearer("warm-0"))
        assert unknown.status_code == 404, unknown.text


async def test_a_stopped_redis_costs_a_bounded_503_not_a_hung_request(own_redis: RedisProcess, own_node: Any) -> None:
    command_timeout = 1.0
    node = await own_node(redis_pool_timeout=0.5, redis_command_timeout=command_timeout)
    await register(node, "bob", "b1")
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30, limits=CLIENT_LIMITS) as http:
        own_redis.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            started = time.monotonic()
            put, status = await asyncio.gather(
                http.put("/v1/devices/b1", json={}, headers=bearer("bob")),
                http.get(f"/v1/calls/{uuid.uuid4()}/status", headers=bearer("bob")),
            )
            elapsed = time.monotonic() - started
        finally:
            own_redis.resume()
        assert_unavailable(put)
        assert_unavailable(status)
        # One command timeout; at worst a health-check ping and one reconnect before it.
        assert elapsed < 3 * command_timeout, elapsed
        again = await http.put("/v1/devices/b1", json={}, headers=bearer("bob"))
        assert again.status_code == 200, again.text


async def test_a_redis_at_its_maxmemory_costs_503s_not_500s_and_nothing_after(
    own_redis: RedisProcess, own_node: Any
) -> None:
    # noeviction at maxmemory (docs/deploy.md's policy): Redis refuses writes with OOM.
    # That is Redis unavailable for now: a 503 with Retry-After on every path, the status
    # endpoint's own pipe included, and service again once memory is there.
    node = await own_node()
    await register(node, "bob", "b1")
    caller = await node.device("alice", "a1")
    phone = await node.device("bob", "b1")
    call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
    await phone.expect("call.incoming", call_id=call_id)
    with own_redis.client() as admin:
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(used // 2))
        try:
            async with httpx.AsyncClient(base_url=node.base_url, timeout=30, limits=CLIENT_LIMITS) as http:
                assert_unavailable(await http.put("/v1/devices/b2", json={}, headers=bearer("bob")))
                assert_unavailable(
                    await http.get(f"/v1/calls/{call_id}/status", params={"device_id": "b1"}, headers=bearer("bob"))
                )
            refused = await caller.request({"type": "call.start", "callee": "bob"})
            assert (refused["type"], refused["code"]) == ("error", "unavailable"), refused
        finally:
            admin.config_set("maxmemory", "0")
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30, limits=CLIENT_LIMITS) as http:
        status = await http.get(f"/v1/calls/{call_id}/status", params={"device_id": "b1"}, headers=bearer("bob"))
        assert (status.status_code, status.json()["state"]) == (200, "ringing"), status.text
    answered = await phone.request({"type": "call.answer", "call_id": call_id})
    assert answered["type"] == "ack", answered


async def test_the_live_feed_says_hello_again_after_a_redis_restart_and_goes_on(
    own_redis: RedisProcess, own_node: Any
) -> None:
    node = await own_node()
    caller = await node.device("alice", "a1")
    socket = await watch(node)
    try:
        own_redis.kill()
        own_redis.start()
        # redis-py reconnects and subscribes again; the operator is told to read the snapshot again.
        async with asyncio.timeout(15):
            while (frame := orjson.loads(await socket.recv()))["type"] != "hello":
                pass
        assert frame["node"] == node.node.node_id
        async with asyncio.timeout(15):  # the caller's socket may have been closed by the outage
            while True:
                try:
                    call_id = await place_call(caller, "nobody")
                    break
                except (AssertionError, ConnectionClosed):
                    await asyncio.sleep(0.2)
                    caller = await node.device("alice", "a1")
        async with asyncio.timeout(5):
            while (frame := orjson.loads(await socket.recv())).get("call_id") != call_id:
                pass
        assert frame["entry"]["event"] == "created"
    finally:
        await socket.close()


# Item 5: Redis down, as a node process sees it -------------------------------------------


def spawn_node(tmp_path: Path, redis_url: str, prefix: str, name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VOIP_REDIS_PREFIX": prefix,
        "VOIP_JWT_SECRET": SECRET,
        "PORT": str(port),
        "VOIP_NODE_ID": name,
    }
    for variable in ("APNS_KEY_FILE", "APNS_ENDPOINT", "VOIP_CONFIG", "SIP_ENABLED"):
        env.pop(variable, None)
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base, log_path
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(log_path.read_text())


def log_events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_redis_down_503_with_retry_after_ws_1013_and_one_log_line_per_interval(
    own_redis: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    process, base, log_path = spawn_node(tmp_path, own_redis.url, prefix, "down-node")
    ws_url = base.replace("http://", "ws://") + "/v1/ws"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=CLIENT_LIMITS) as http:
            assert (await http.put("/v1/devices/b1", json={}, headers=bearer("bob"))).status_code == 201
            open_socket, code = await connect(ws_url, "alice")
            assert code == "hello"
            own_redis.kill()
            down_at = time.monotonic()
            # A socket already open stays open; a request on it is answered `unavailable`.
            await open_socket.send(orjson.dumps({"type": "call.start", "callee": "bob", "id": "r1"}).decode())
            reply = orjson.loads(await asyncio.wait_for(open_socket.recv(), 20))
            assert (reply["type"], reply["code"], reply["id"], reply["retry_after"]) == (
                "error",
                "unavailable",
                "r1",
                2,
            )
            for _ in range(3):
                assert_unavailable(await http.get(f"/v1/calls/{uuid.uuid4()}/status", headers=bearer("bob")))
                assert_unavailable(await http.put("/v1/devices/b1", json={}, headers=bearer("bob")))
                assert_unavailable(await http.get("/v1/devices", headers=bearer("bob")))
                assert_unavailable(await http.delete("/v1/devices/b1", headers=bearer("bob")))
                socket, code = await connect(ws_url, "bob")
                assert code == 1013
                await socket.close()
            # Long enough for the ring-timeout poller to fail a dozen times.
            await asyncio.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
            own_redis.start()
            deadline = time.monotonic() + 20
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "never ready again"
                await asyncio.sleep(0.1)
            assert (await http.put("/v1/devices/b2", json={}, headers=bearer("bob"))).status_code == 201
            socket, code = await connect(ws_url, "bob")
            assert code == "hello"
            await socket.close()
            await open_socket.send(orjson.dumps({"type": "ping", "id": "r2"}).decode())
            assert orjson.loads(await asyncio.wait_for(open_socket.recv(), 10))["type"] == "pong"
            await open_socket.close()
            await asyncio.sleep(1)  # a poll of the ring timeouts after the recovery
    finally:
        process.terminate()
        process.wait(15)

    events = log_events(log_path)
    polls = [e for e in events if e["event"] == "timeouts.poll_failed"]
    # The outage (about 4 s) is shorter than the interval (10 s): one line when it began,
    # one when it ended, which counts the failures in between.
    assert [bool(e.get("recovered")) for e in polls] == [False, True], polls
    assert polls[0]["count"] == 1 and polls[1]["count"] >= 5, polls
    unavailable = [e for e in events if e["event"] == "redis.unavailable"]
    assert len(unavailable) == 1 and unavailable[0]["count"] == 1, unavailable
    assert len([e for e in events if e["event"] == "bus.read_failed" and not e.get("recovered")]) <= 1
    assert not [e for e in events if e.get("status_code") == 500 or e["event"] == "ws.handler_failed"]


# Item 3: a node killed with -9 -----------------------------------------------------------


async def test_a_node_killed_9_leaves_its_devices_offline_within_15_s_and_they_get_cancellations(
    node_factory: Any,
    apns: tuple[APNsSimulator, dict[str, str]],
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    sim, apns_settings = apns
    alice_node = await node_factory(**apns_settings)
    bob_phone = phone(sim, online=False)
    await register(alice_node, "bob", "b-phone", voip_token=bob_phone.token)
    process, base, _ = spawn_node(tmp_path, redis_url, prefix, "doomed-node")
    try:
        bob, code = await connect(base.replace("http://", "ws://") + "/v1/ws", "bob", "b-phone")
        assert code == "hello"
        caller = await alice_node.device("alice", "a1")
        call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
        incoming = orjson.loads(await asyncio.wait_for(bob.recv(), 10))
        assert (incoming["type"], incoming["call_id"]) == ("call.incoming", call_id)
        await invites_for(sim, call_id)
        stores = alice_node.node.stores
        assert "b-phone" in (await stores.devices.reachable("bob"))[1]

        process.kill()
        killed_at = time.monotonic()
        while "b-phone" in (await stores.devices.reachable("bob"))[1]:
            assert time.monotonic() - killed_at < 20, "still online 20 s after its node died"
            await asyncio.sleep(0.1)
        offline_after = time.monotonic() - killed_at
        # The entry lapses 12 s (PRESENCE_TTL_MS) after the last heartbeat at most; the
        # issue's bound is 15 s.
        assert offline_after <= 15, offline_after
    finally:
        process.kill()
        process.wait(10)

    # The call still rings; the caller gives up. Bob's phone, whose socket died with its
    # node, does not know: it gets the cancellation push.
    await caller.request({"type": "call.hangup", "call_id": call_id})
    [cancel] = await invites_for(sim, call_id, "call.cancelled")
    assert cancel.token == bob_phone.token
    assert orjson.loads(cancel.body)["reason"] == "remote_ended"
