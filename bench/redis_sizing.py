"""`python -m bench.redis_sizing [--devices N] [--calls N]`: how much Redis memory a
registered device and a finished call take (docs/deploy.md#sizing).

A real node on a private, empty redis-server, driven through its own code paths:
devices registered with `PUT /v1/devices/{id}` (VoIP and alert tokens), then calls
placed, pushed (the bundled APNs simulator, phones asleep), checked on the status
endpoint and ended. Memory is Redis's own count: `MEMORY USAGE <key> SAMPLES 0` of every
key, summed by kind, and `INFO memory` `used_memory` before and after, which adds the
server's own overhead (its key and expiry dictionaries, allocator rounding).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn

from voip import logs
from voip.app import create_app
from voip.calls import Action
from voip.controller import Caller
from voip.node import Node
from voip.redis_server import PrivateRedis
from voip.settings import load_settings

TOPIC = "com.example.caller.voip"
BATCH = 50  # requests at once


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def drained(node: Node) -> None:
    """Every push in flight has its answer on the timeline."""
    while node.pushes._sending:
        await asyncio.sleep(0.01)


async def measure(devices: int, calls: int) -> dict[str, Any]:
    with PrivateRedis() as server:
        settings = load_settings(redis_url=server.url, jwt_secret="s" * 32, port=0, log_level="error",
                                 max_ringing_per_callee=1000, calls_per_callee_per_minute=100000)
        app = create_app(settings)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on")
        uv = uvicorn.Server(config)
        serving = asyncio.create_task(uv.serve())
        while not uv.started:
            await asyncio.sleep(0.01)
        port = uv.servers[0].sockets[0].getsockname()[1]
        node: Node = app.state.node
        assert node.apns_simulator is not None
        client = aioredis.Redis.from_url(server.url)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        try:
            return await _run(node, client, http, devices, calls)
        finally:
            await http.aclose()
            await client.aclose()
            uv.should_exit = True
            await serving


async def _run(node: Node, client: aioredis.Redis, http: httpx.AsyncClient, devices: int, calls: int) -> dict[str, Any]:
    sim = node.apns_simulator
    assert sim is not None
    auth = node.auth

    async def register(user: str, device: str) -> None:
        phone = sim.add_device(TOPIC, online=False)  # asleep: invites wait in APNs
        response = await http.put(
            f"/v1/devices/{device}",
            json={"voip_token": phone.token, "apns_environment": "sandbox", "alert_token": uuid.uuid4().hex * 2},
            headers={"Authorization": f"Bearer {auth.mint(user, 'device')}"},
        )
        response.raise_for_status()

    async def batches(count: int, size: int, work: Any) -> list[Any]:
        done: list[Any] = []
        for start in range(0, count, size):
            done += await asyncio.gather(*(work(i) for i in range(start, min(count, start + size))))
        return done

    baseline = await used_memory(client)
    # One device per user, the common case: the user's keys are counted with the device.
    await batches(devices, BATCH, lambda i: register(f"user{i}", f"phone{i}"))

    async def one_call(i: int, answered: bool) -> str:
        callee, device = f"user{i % devices}", f"phone{i % devices}"
        call = await node.controller.start_call(Caller(f"caller{i}", f"c{i}"), callee)
        await drained(node)
        status = await http.get(
            f"/v1/calls/{call.call_id}/status", params={"device_id": device},
            headers={"Authorization": f"Bearer {auth.mint(callee, 'device')}"},
        )
        status.raise_for_status()
        if answered:
            await node.controller.ringing(callee, device, call.call_id)
            await node.controller.act(Action.ANSWER, callee, device, call.call_id)
            await node.controller.act(Action.HANGUP, f"caller{i}", f"c{i}", call.call_id)
        else:  # the caller gives up; the sleeping phone gets a cancellation push
            await node.controller.act(Action.HANGUP, f"caller{i}", f"c{i}", call.call_id)
            await drained(node)
        return call.call_id

    figures: dict[str, Any] = {"devices": devices, "calls": f"{calls} answered, {calls} cancelled"}
    started = time.monotonic()
    last = [(await batches(calls, BATCH, lambda i: one_call(i, answered)))[-1] for answered in (True, False)]
    await drained(node)
    figures["seconds"] = round(time.monotonic() - started, 1)
    # Keys that die within a minute of a call's start (the callee's ringing and
    # call-starts sets) are not what a day of retention holds.
    for key in [k async for k in client.scan_iter(match="*:call_starts", count=1000)]:
        await client.delete(key)
    kinds = await census(client, node.stores.keys.prefix)
    for kind, (count, total) in sorted(kinds.items()):
        figures[f"keys {kind}"] = f"{count} keys, {total} bytes, {total // max(count, 1)} each"
    call_bytes = sum(kinds.get(kind, (0, 0))[1] for kind in ("call", "timeline", "pushes", "cancellations", "calls"))
    device_bytes = sum(kinds.get(kind, (0, 0))[1] for kind in ("devices", "last_push"))
    figures["per call (MEMORY USAGE)"] = round(call_bytes / (2 * calls))
    figures["per device (MEMORY USAGE)"] = round(device_bytes / devices)
    grown = await used_memory(client) - baseline
    figures["used_memory growth"] = f"{grown} bytes ({grown / max(call_bytes + device_bytes, 1):.2f} x the keys' sum)"
    figures["per call, used_memory share"] = round(grown * call_bytes / (call_bytes + device_bytes) / (2 * calls))
    figures["per device, used_memory share"] = round(grown * device_bytes / (call_bytes + device_bytes) / devices)
    figures["timeline entries (answered, cancelled)"] = [
        await client.llen(node.stores.keys.timeline(call_id)) for call_id in last
    ]
    return figures


async def census(client: aioredis.Redis, prefix: str) -> dict[str, tuple[int, int]]:
    """`MEMORY USAGE` of every key, by kind: (keys, bytes). What each kind of record
    holds, without the allocator's and the server's own overhead."""
    kinds: dict[str, tuple[int, int]] = {}
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = key.decode().removeprefix(prefix).rsplit(":", 1)[-1]
        usage = await client.memory_usage(key, samples=0) or 0
        count, total = kinds.get(kind, (0, 0))
        kinds[kind] = (count + 1, total + usage)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_sizing")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=2000, help="of each kind: answered, cancelled")
    args = parser.parse_args()
    logs.configure("error")
    figures = asyncio.run(measure(args.devices, args.calls))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
