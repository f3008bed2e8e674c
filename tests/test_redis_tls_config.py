"""TLS to Redis, configured: REDIS_TLS and REDIS_URL's scheme agree, the REDIS_TLS_* files
are checked at start with one line naming the variable, the Sentinel settings come only
with Sentinels and their password is never shown; and what connections each path then
builds (no Redis needed: nothing connects here; tests/cluster/test_cluster_tls.py and
tests/resilience/test_sentinel_tls.py connect)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from tests.redis_tls import Certificates, make_ca, make_certificates
from voip.redis_conn import ClusterConnection, ClusterTLSConnection, RedisConnections, SentinelTLSConnection
from voip.redis_tls import TLSConnection
from voip.settings import Settings, SettingsError, load_settings

CLUSTER = "127.0.0.1:7000,127.0.0.1:7001"
SENTINELS = {"redis_sentinels": "127.0.0.1:26379", "redis_sentinel_master": "voip"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("REDIS_") or name.upper() == "VOIP_CONFIG":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


def failure(**settings: Any) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**settings)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def loaded(**settings: Any) -> Settings:
    return load_settings(jwt_secret="s" * 32, **settings)


@pytest.mark.parametrize(
    ("settings", "tls", "sentinel_tls"),
    [
        ({}, False, False),
        ({"redis_url": "redis://h:6379/0"}, False, False),
        ({"redis_url": "rediss://h:6380/0"}, True, True),
        ({"redis_url": "REDISS://h:6380/0"}, True, True),
        ({"redis_url": "rediss://h:6380/0", "redis_tls": True}, True, True),
        ({"redis_cluster_nodes": CLUSTER, "redis_tls": True}, True, True),
        ({**SENTINELS, "redis_tls": True}, True, True),
        ({**SENTINELS, "redis_tls": True, "redis_sentinel_tls": False}, True, False),
        ({**SENTINELS, "redis_sentinel_tls": True}, False, True),
        ({"redis_url": "redis://h:6379/0", "redis_tls": ""}, False, False),  # REDIS_TLS="": unset
    ],
)
def test_tls_is_on_where_asked_or_implied_and_always_a_bool_once_loaded(
    settings: dict[str, Any], tls: bool, sentinel_tls: bool
) -> None:
    loaded_settings = loaded(**settings)
    assert (loaded_settings.redis_tls, loaded_settings.redis_sentinel_tls) == (tls, sentinel_tls)


def test_redis_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER_NODES", CLUSTER)
    monkeypatch.setenv("REDIS_TLS", "true")
    assert loaded().redis_tls is True


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"redis_url": "rediss://h:6380/0", "redis_tls": False},
            "REDIS_TLS: false, but REDIS_URL is rediss://, which is TLS",
        ),
        (
            {"redis_url": "redis://h:6379/0", "redis_tls": True},
            "REDIS_TLS: true, but REDIS_URL is redis://; TLS is rediss://",
        ),
        (
            {"redis_url": "unix:///run/redis.sock", "redis_tls": True},
            "REDIS_TLS: true, but REDIS_URL is unix://; TLS is rediss://",
        ),
        (
            {"redis_tls": True},
            "REDIS_TLS: needs REDIS_URL (rediss://), REDIS_CLUSTER_NODES or REDIS_SENTINELS; "
            "the private development Redis has no TLS",
        ),
        ({"redis_sentinel_tls": True}, "REDIS_SENTINEL_TLS: only with REDIS_SENTINELS"),
        ({"redis_sentinel_password": "pw-of-the-sentinels"}, "REDIS_SENTINEL_PASSWORD: only with REDIS_SENTINELS"),
        (
            {"redis_cluster_nodes": CLUSTER, "redis_tls_ca_file": "/etc/ca.pem"},
            "REDIS_TLS_CA_FILE: set, but TLS to Redis is off (REDIS_TLS)",
        ),
        (
            {"redis_url": "redis://h:6379/0", "redis_tls_server_name": "redis.internal"},
            "REDIS_TLS_SERVER_NAME: set, but TLS to Redis is off (REDIS_TLS)",
        ),
        (
            {"redis_url": "rediss://h:6380/0", "redis_tls_server_name": "redis.internal"},
            "REDIS_TLS_SERVER_NAME: only with REDIS_CLUSTER_NODES or REDIS_SENTINELS (REDIS_URL names its host)",
        ),
        (
            {"redis_cluster_nodes": CLUSTER, "redis_tls": True, "redis_tls_cert_file": "/etc/client.pem"},
            "REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE: both or neither",
        ),
        (
            {"redis_cluster_nodes": CLUSTER, "redis_tls": True, "redis_tls_ca_file": "/nonexistent/ca.pem"},
            "REDIS_TLS_CA_FILE: not a readable file: /nonexistent/ca.pem",
        ),
    ],
)
def test_tls_settings_that_contradict_or_miss_stop_start_up_with_one_line(
    settings: dict[str, Any], message: str
) -> None:
    assert failure(**settings) == message


def test_a_server_name_must_be_a_host_name() -> None:
    message = failure(redis_cluster_nodes=CLUSTER, redis_tls=True, redis_tls_server_name="redis internal")
    assert message.startswith("REDIS_TLS_SERVER_NAME (redis_tls_server_name): String should match pattern")


def test_files_that_are_not_pem_or_do_not_match_are_refused(certificates: Certificates, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    tls = {"redis_cluster_nodes": CLUSTER, "redis_tls": True}
    assert failure(**tls, redis_tls_ca_file=str(garbage)).startswith("REDIS_TLS_CA_FILE: not PEM certificates (")
    other_cert = make_certificates(tmp_path / "other").client_cert
    message = failure(**tls, redis_tls_cert_file=str(other_cert), redis_tls_key_file=str(certificates.client_key))
    assert message.startswith("REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE: not a PEM certificate and its key (")
    key_bytes = certificates.client_key.read_bytes()
    assert key_bytes.decode() not in message


def test_an_unreadable_file_is_named(certificates: Certificates, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root reads anything: a directory stands in for an unreadable file
        unreadable = tmp_path / "a-directory.pem"
        unreadable.mkdir()
    else:
        unreadable = tmp_path / "locked.pem"
        unreadable.write_bytes(certificates.ca.read_bytes())
        unreadable.chmod(0)
    message = failure(
        redis_cluster_nodes=CLUSTER,
        redis_tls=True,
        redis_tls_key_file=str(unreadable),
        redis_tls_cert_file=str(certificates.client_cert),
    )
    assert message == f"REDIS_TLS_KEY_FILE: not a readable file: {unreadable}"


def test_the_sentinels_password_is_never_shown() -> None:
    settings = loaded(**SENTINELS, redis_sentinel_password="pw-of-the-sentinels-9")
    assert "pw-of-the-sentinels-9" not in repr(settings) + str(settings)
    connections = RedisConnections.from_settings(settings)
    assert "pw-of-the-sentinels-9" not in repr(connections.sentinel.sentinels)  # type: ignore[union-attr]


async def test_a_tls_cluster_builds_every_node_connection_over_tls(certificates: Certificates) -> None:
    settings = loaded(
        redis_cluster_nodes=CLUSTER,
        redis_tls=True,
        redis_tls_ca_file=str(certificates.ca),
        redis_tls_cert_file=str(certificates.client_cert),
        redis_tls_key_file=str(certificates.client_key),
        redis_tls_server_name="redis.internal",
    )
    connections = RedisConnections.from_settings(settings)
    cluster = connections.client
    assert isinstance(cluster, RedisCluster)
    # Nodes found later are built from the shared arguments; the startup nodes were built already.
    assert cluster.nodes_manager.connection_kwargs is cluster.connection_kwargs
    for options in (cluster.connection_kwargs, *(node.connection_kwargs for node in cluster.startup_nodes)):
        assert options["tls"] is connections.tls
    assert {node.connection_class for node in cluster.startup_nodes} == {ClusterTLSConnection}
    assert cluster.connection_kwargs["connection_class"] is ClusterTLSConnection
    assert issubclass(ClusterTLSConnection, ClusterConnection)  # a dropped write is still a ConnectionError
    assert connections.tls is not None and connections.tls.server_name == "redis.internal"
    context = connections.tls.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert connections.status_pipe() is None
    await connections.aclose()


async def test_sentinels_and_their_master_each_get_their_own_tls(certificates: Certificates) -> None:
    common = {**SENTINELS, "redis_tls_ca_file": str(certificates.ca), "redis_tls_server_name": "redis.internal"}
    both = RedisConnections.from_settings(loaded(**common, redis_tls=True))
    assert both.sentinel is not None and both.tls is not None
    [sentinel_client] = both.sentinel.sentinels
    sentinel_options = sentinel_client.connection_pool.connection_kwargs
    assert sentinel_client.connection_pool.connection_class is TLSConnection
    # A Sentinel is checked against the name it is listed under; the master against the service's.
    assert sentinel_options["tls"].server_name is None
    assert sentinel_options["tls"].context is both.tls.context
    assert both.client.connection_pool.connection_class is SentinelTLSConnection
    assert both.client.connection_pool.connection_kwargs["tls"] is both.tls
    pipe = both.status_pipe()
    assert pipe is not None and pipe._tls is both.tls.context and pipe._server_hostname == "redis.internal"
    await both.aclose()

    plain_sentinels = RedisConnections.from_settings(loaded(**common, redis_tls=True, redis_sentinel_tls=False))
    assert plain_sentinels.sentinel is not None
    assert plain_sentinels.sentinel.sentinels[0].connection_pool.connection_class.__name__ == "Connection"
    assert plain_sentinels.client.connection_pool.connection_class is SentinelTLSConnection
    await plain_sentinels.aclose()

    plain_master = RedisConnections.from_settings(loaded(**common, redis_sentinel_tls=True))
    assert plain_master.sentinel is not None and plain_master.tls is None
    assert plain_master.sentinel.sentinels[0].connection_pool.connection_class is TLSConnection
    assert plain_master.client.connection_pool.connection_class is not SentinelTLSConnection
    pipe = plain_master.status_pipe()
    assert pipe is not None and pipe._tls is None
    await plain_master.aclose()


async def test_the_tls_files_fill_in_what_a_rediss_url_leaves_out(certificates: Certificates, tmp_path: Path) -> None:
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    files = {
        "redis_tls_ca_file": str(certificates.ca),
        "redis_tls_cert_file": str(certificates.client_cert),
        "redis_tls_key_file": str(certificates.client_key),
    }
    filled = RedisConnections.from_settings(loaded(redis_url="rediss://127.0.0.1:6380/0", **files))
    options = filled.client.connection_pool.connection_kwargs
    assert (options["ssl_ca_certs"], options["ssl_certfile"]) == (str(certificates.ca), str(certificates.client_cert))
    pipe = filled.status_pipe()
    assert pipe is not None and pipe._tls is not None and pipe._tls.verify_mode == ssl.CERT_REQUIRED
    # As redis-py's pool: the file's CA, beside the system's (redis-py adds, not replaces).
    assert ((("commonName", "test-ca"),),) in [ca["subject"] for ca in pipe._tls.get_ca_certs()]
    await filled.aclose()

    own = RedisConnections.from_settings(
        loaded(redis_url=f"rediss://127.0.0.1:6380/0?ssl_ca_certs={other_ca}", **files)
    )
    assert own.client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(other_ca)
    await own.aclose()
