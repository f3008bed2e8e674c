"""Nodes on the module's real Redis Cluster (tests/redis_cluster.py), with REDIS_CLUSTER_NODES;
the test's keys are deleted from every primary afterwards, since the cluster outlives it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import RunningNode, make_settings, start_node, stop_nodes
from tests.redis_cluster import LocalCluster


@pytest.fixture
async def cluster_node(
    redis_cluster: LocalCluster, prefix: str, running_nodes: list[RunningNode]
) -> AsyncIterator[Any]:
    async def factory(**overrides: Any) -> RunningNode:
        settings = make_settings("", prefix, redis_cluster_nodes=redis_cluster.startup_nodes, **overrides)
        running = await start_node(settings)
        running_nodes.append(running)
        return running

    yield factory
    await stop_nodes(running_nodes)
    for node in redis_cluster.live_primaries():
        with node.client() as client:
            for key in client.scan_iter(match=f"{prefix}*", count=500):
                client.delete(key)
