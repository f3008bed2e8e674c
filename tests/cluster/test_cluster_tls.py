"""A Redis Cluster on TLS only (`--port 0`, `--tls-port`, `--tls-cluster yes`,
`--tls-replication yes`), asking clients for a certificate and a password: nodes given
REDIS_CLUSTER_NODES, REDIS_TLS and its files ring, answer and read a call's status over
it, from one startup node, so every other node's connection is one the cluster client
discovered. A wrong CA, a wrong server name, no client certificate and no password each
stop a node at start with one line that says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from tests.conftest import SECRET, RunningNode, make_settings, start_node, stop_nodes
from tests.ports import free_port
from tests.redis_cluster import LocalCluster
from tests.redis_tls import Certificates, make_ca, make_certificates, start_up_error
from voip.redis_conn import ClusterTLSConnection

pytestmark = pytest.mark.interop

PASSWORD = "cluster-pass-7"
SERVER_NAME = "redis.voip.test"  # in the nodes' certificate beside 127.0.0.1


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("cluster-tls"), (SERVER_NAME,))


@pytest.fixture(scope="module")
def tls_cluster(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tls=certificates, password=PASSWORD).start()
    try:
        yield cluster
    finally:
        cluster.stop(keep_logs_in=tmp_path_factory.mktemp("cluster-tls-logs"))


def tls_settings(cluster: LocalCluster, certificates: Certificates, **overrides: Any) -> dict[str, Any]:
    """What a node is told: one startup node, TLS with a client certificate, the password."""
    settings = {
        "redis_cluster_nodes": cluster.nodes[0].address,
        "redis_tls": True,
        "redis_tls_ca_file": str(certificates.ca),
        "redis_tls_cert_file": str(certificates.client_cert),
        "redis_tls_key_file": str(certificates.client_key),
        "redis_password": PASSWORD,
        **overrides,
    }
    return {name: value for name, value in settings.items() if value is not None}


@pytest.fixture
def nodes(tls_cluster: LocalCluster, prefix: str) -> Iterator[list[RunningNode]]:
    running: list[RunningNode] = []
    yield running
    for node in tls_cluster.live_primaries():
        with node.client() as client:
            for key in client.scan_iter(match=f"{prefix}*", count=500):
                client.delete(key)


async def test_a_call_across_two_nodes_on_a_tls_cluster(
    tls_cluster: LocalCluster, certificates: Certificates, prefix: str, nodes: list[RunningNode]
) -> None:
    settings = tls_settings(tls_cluster, certificates, redis_tls_server_name=SERVER_NAME)
    try:
        for _ in range(2):
            nodes.append(await start_node(make_settings("", prefix, **settings)))
        node_a, node_b = nodes
        caller = await node_a.device("alice", "a1")
        phone = await node_b.device("bob", "b1")
        call_id = (await caller.request({"type": "call.start", "callee": "bob"}))["call_id"]
        await phone.expect("call.incoming", call_id=call_id)
        await phone.request({"type": "call.answer", "call_id": call_id, "sdp": "v=0"})
        assert (await caller.expect("call.answered", call_id=call_id))["device_id"] == "b1"
        status = await node_b.http().get(
            f"/v1/calls/{call_id}/status",
            headers={"Authorization": f"Bearer {node_b.auth.mint('bob', 'device')}"},
            params={"device_id": "b1"},
        )
        assert status.status_code == 200, status.text
        assert status.json()["state"] == "answered"

        # The write is in the cluster, where the call's slot lives (read with the test's own client).
        key = node_a.node.stores.keys.call(call_id)
        with tls_cluster.owner(tls_cluster.slot_of(key)).client() as owner:
            assert owner.hget(key, "state") == b"answered"
        # Told one node, each node's client found every primary, and reaches each over TLS,
        # checked against the service's name.
        for running in nodes:
            client = running.node.connections.client
            assert isinstance(client, RedisCluster)
            primaries = {node.port for node in client.get_primaries()}
            assert primaries == {node.port for node in tls_cluster.live_primaries()}
            connections = [c for node in client.get_nodes() for c in node._connections]
            assert {node.connection_class for node in client.get_nodes()} == {ClusterTLSConnection}
            # The bus's subscriptions, one connection per shard, are made the same way.
            shards = running.node.bus._pubsub._shards
            connections += [pubsub.connection for pubsub, _ in shards.values()]
            assert shards and len(connections) > len(shards)
            for connection in connections:
                assert isinstance(connection, ClusterTLSConnection)
                assert connection.tls.server_name == SERVER_NAME
                if connection.is_connected:
                    assert connection._writer.get_extra_info("ssl_object").server_hostname == SERVER_NAME
    finally:
        await stop_nodes(nodes)


@pytest.mark.parametrize(
    ("change", "error"),  # error: a pattern of what the node says
    [
        ("wrong CA", "certificate verify failed"),
        ("wrong server name", r"Hostname mismatch, certificate is not valid for 'redis\.other\.test'"),
        # TLS 1.3: the server refuses once the handshake is done; how the client hears it varies.
        ("no client certificate", "Connection reset by peer|certificate required"),
        ("no password", "authenticated"),
        ("wrong password", "invalid username-password pair"),
    ],
)
async def test_a_node_that_cannot_speak_to_the_tls_cluster_says_why_at_start(
    tls_cluster: LocalCluster, certificates: Certificates, tmp_path: Path, prefix: str, change: str, error: str
) -> None:
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    choices: dict[str, dict[str, Any]] = {
        "wrong CA": {"redis_tls_ca_file": str(other_ca)},
        "wrong server name": {"redis_tls_server_name": "redis.other.test"},
        "no client certificate": {"redis_tls_cert_file": None, "redis_tls_key_file": None},
        "no password": {"redis_password": None},
        "wrong password": {"redis_password": "not-" + PASSWORD},
    }
    overrides = choices[change]
    said = await start_up_error(make_settings("", prefix, **tls_settings(tls_cluster, certificates, **overrides)))
    assert re.search(error, said), said
    assert PASSWORD not in said


def test_a_wrong_ca_stops_the_process_with_one_line(
    tls_cluster: LocalCluster, certificates: Certificates, tmp_path: Path, prefix: str
) -> None:
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "APNS_", "SIP_", "VOIP_"))},
        "REDIS_CLUSTER_NODES": tls_cluster.nodes[0].address,
        "REDIS_TLS": "true",
        "REDIS_TLS_CA_FILE": str(other_ca),
        "REDIS_TLS_CERT_FILE": str(certificates.client_cert),
        "REDIS_TLS_KEY_FILE": str(certificates.client_key),
        "REDIS_PASSWORD": PASSWORD,
        "VOIP_REDIS_PREFIX": prefix,
        "VOIP_JWT_SECRET": SECRET,
        "PORT": str(free_port()),
    }
    finished = subprocess.run(
        [sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    output = (finished.stdout + finished.stderr).decode(errors="replace")
    assert finished.returncode != 0, output
    events = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    [unreachable] = [e for e in events if e["event"] == "node.redis_unreachable"]
    assert "certificate verify failed" in unreachable["error"], unreachable
    assert PASSWORD not in output
