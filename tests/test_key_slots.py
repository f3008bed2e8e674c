"""Every script a store runs touches one Redis Cluster slot: each store method that runs a
script is called on a real Redis while MONITOR records the EVALSHAs, and the slot of every
key each one was given is computed (redis.crc.key_slot). Every script in voip/lua/ must be
seen, so a new one cannot slip past."""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources

from redis.asyncio import Redis
from redis.crc import key_slot

from voip.calls import Action
from voip.clock import now_ms
from voip.stores import Stores
from voip.stores.layout import BUCKETS


def _scripts() -> dict[str, str]:
    """sha1 -> name of every script in voip/lua/."""
    lua = resources.files("voip").joinpath("lua")
    return {
        hashlib.sha1(f.read_text().encode()).hexdigest(): f.name.removesuffix(".lua")
        for f in lua.iterdir()
        if f.name.endswith(".lua")
    }


async def test_every_script_touches_one_slot(redis_url: str, redis: Redis, prefix: str) -> None:
    seen: list[tuple[str, list[bytes]]] = []
    monitoring = asyncio.Event()
    # MONITOR shows commands in order: once the marker is seen, all before it are.
    marker = redis.register_script("return 1")
    marked = asyncio.Event()

    async def monitor() -> None:
        async with Redis.from_url(redis_url).monitor() as m:
            monitoring.set()
            async for command in m.listen():
                parts = command["command"].split(" ")
                if parts[0].upper() != "EVALSHA" or prefix not in command["command"]:
                    continue
                # MONITOR quotes each argument: "EVALSHA" "<sha>" "<n>" "<key>"...
                args = [p.strip('"') for p in parts]
                numkeys = int(args[2])
                seen.append((args[1], [a.encode() for a in args[3 : 3 + numkeys]]))
                if args[1] == marker.sha:
                    marked.set()

    watcher = asyncio.create_task(monitor())
    await monitoring.wait()
    try:
        # Webhooks on: the call scripts then touch the call's outbox too.
        stores = Stores.open(redis, prefix, retention=60, webhooks_ttl=60)
        now = now_ms()
        await stores.limits.admit("c1", "bob", now=now, ring_deadline=now + 30000, max_ringing=3, per_minute=20)
        assert await stores.calls.create(
            "c1",
            caller_user="alice",
            caller_device="a1",
            callee_user="bob",
            ring_deadline=now - 1,
            node="n",
            targets=["b1"],
            created_at=now,
            pushes={"b1": {"token": "t"}},
            announce=("chan", b"{}"),
        )
        await stores.calls.record_event("c1", user="bob", device="b1", entry={"event": "ringing"})
        await stores.calls.record_event(
            "c1", user="bob", device="b1", once_field="first_ringing_at", webhook="call.ringing"
        )
        await stores.calls.webhook_event("c1", "push.failed", {"push": {}}, now)
        await stores.calls.status_check("c1", user="bob", device="b1", node="n", via="bearer", at=now)
        await stores.calls.claim_due_timeouts(now_ms(), 1000, node="n", buckets=list(range(BUCKETS)))
        await stores.push_log.record_answer(
            "c1", {"event": "push"}, cancelled=("b1", now), last_push=("bob", "b1", {"event": "push"})
        )
        await stores.calls.transition("c1", Action.TIMEOUT, node="n")
        await stores.presence.set("bob", "b1", "n", 5000)
        await stores.presence.renew({"bob": ["b1"], "alice": ["a1"]}, "n", 5000)
        await stores.presence.clear("bob", "b1", "n")
        await stores.sockets.open("bob", "b1|s1", 10)
        await stores.devices.put("bob", "b1", {"voip_token": "t", "updated_at": now}, 10)
        await stores.devices.drop_voip_token("bob", "b1", "t", None)
        await stores.nonces.consume("nonce", 1, 30)
        [(_, lease)] = await stores.webhooks.claim_due(now_ms(), 1000, list(range(BUCKETS)))
        taken = await stores.webhooks.take("c1", "token", 1000)
        assert taken is not None and len(taken.events) == 4  # created, ringing, push.failed, missed
        assert await stores.webhooks.reschedule("c1", lease, lease + 1)
        await stores.webhooks.settle("c1", "token", {"k:sent": 4}, lease + 1, None)
        await marker(keys=[f"{prefix}marker"])
        async with asyncio.timeout(10):
            await marked.wait()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    names = _scripts()
    ran = set()
    for sha, keys in seen:
        if sha == marker.sha:
            continue
        assert keys, names.get(sha, sha)
        assert len({key_slot(k) for k in keys}) == 1, (names.get(sha, sha), keys)
        ran.add(names.get(sha, sha))
    assert ran == set(names.values())
