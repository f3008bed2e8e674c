"""TLS to Redis on the paths whose addresses a node is handed rather than given: the
nodes of a Redis Cluster, and the Sentinels with the master and replicas they name.

One client context per node, made once from `REDIS_TLS_CA_FILE` (default: the system's
CAs) and `REDIS_TLS_CERT_FILE` + `REDIS_TLS_KEY_FILE` (a client certificate, for a Redis
with `tls-auth-clients yes`). It always checks the server's certificate and its name;
redis-py's own `ssl_*` options could turn either off, this context cannot. The name
checked is the address connected to (an IP, as CLUSTER SLOTS and the Sentinels report
them), or `REDIS_TLS_SERVER_NAME` when the certificates name the service instead.

With `REDIS_URL=rediss://...` redis-py builds the context from the URL's `ssl_*`
parameters as before; the REDIS_TLS_* files fill in the ones the URL leaves out.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import Connection, SSLConnection, parse_url

from voip.settings import Settings


@dataclass(frozen=True)
class RedisTLS:
    context: ssl.SSLContext
    # The name every certificate is checked against; None: the host connected to.
    server_name: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTLS:
        """The data nodes' TLS (cluster nodes, the master and replicas); settings checked
        the files already, so this does not fail."""
        return cls(client_context(settings), settings.redis_tls_server_name or None)

    def for_sentinels(self) -> RedisTLS:
        """The same context; a Sentinel's certificate is checked against the name it is
        listed under in REDIS_SENTINELS, which the operator chose."""
        return RedisTLS(self.context)


def client_context(settings: Settings) -> ssl.SSLContext:
    # create_default_context: CERT_REQUIRED, host names checked, TLS 1.2 or later; a CA
    # file replaces the system's CAs rather than adding to them.
    context = ssl.create_default_context(cafile=settings.redis_tls_ca_file or None)
    if settings.redis_tls_cert_file:
        context.load_cert_chain(settings.redis_tls_cert_file, settings.redis_tls_key_file)
    return context


class TLSConnection(Connection):
    """A redis-py TCP connection wrapped in the node's context (`tls=`), in any pool that
    builds its connections from keyword arguments (a cluster's nodes, Sentinel's pools)."""

    def __init__(self, *, tls: RedisTLS, **kwargs: Any) -> None:
        self.tls = tls
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "ssl": self.tls.context, "server_hostname": self.tls.server_name}


def url_tls_options(settings: Settings) -> dict[str, str]:
    """The REDIS_TLS_* files as redis-py `ssl_*` options, for a rediss:// REDIS_URL that
    does not name its own (from_url lets the URL's win)."""
    files = {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }
    return {name: path for name, path in files.items() if path}


def url_context(settings: Settings) -> ssl.SSLContext | None:
    """The context redis-py's pool makes for REDIS_URL with those files filled in (None
    for redis://), made now, for the status pipe: both check the same things."""
    options: dict[str, Any] = dict(parse_url(settings.redis_url))
    if options.get("connection_class") is not SSLConnection:
        return None
    given = {name: value for name, value in options.items() if name.startswith("ssl_")}
    return SSLConnection(**{**url_tls_options(settings), **given}).ssl_context.get()
