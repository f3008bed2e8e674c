"""APNsSimulator: the public face: lifecycle, keys, devices, faults, records."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from h2.errors import ErrorCodes

from apnsim.auth import (
    TOKEN_MIN_UPDATE_INTERVAL,
    ProviderKey,
    ProviderKeyring,
    SigningKey,
    generate_signing_key,
)
from apnsim.clock import Clock
from apnsim.connection import APNsConnection, ConnectionInfo
from apnsim.devices import Device, DeviceRegistry, Drop, Environment, Push
from apnsim.dispatch import Dispatcher
from apnsim.faults import Fault, FaultBook, InjectedFault
from apnsim.reasons import Reason
from apnsim.records import Predicate, RecordedRequest, RequestLog
from apnsim.tls import server_ssl_context
from simtls import TLSMaterial, generate_tls_material

UNAUTHENTICATED_STREAM_LIMIT = 1
AUTHENTICATED_STREAM_LIMIT = 1000


class APNsSimulator:
    """An APNs provider API (HTTP/2 + TLS) on loopback, for one environment.

    ``async with APNsSimulator(directory) as sim:`` starts it; ``sim.endpoint`` and
    ``sim.ca_file`` tell a client where to connect and which CA to trust.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        environment: Environment | str = Environment.SANDBOX,
        strict_tokens: bool = False,
        clock: Clock | None = None,
        token_update_interval: float = TOKEN_MIN_UPDATE_INTERVAL,
        unauthenticated_stream_limit: int = UNAUTHENTICATED_STREAM_LIMIT,
        stream_limit: int = AUTHENTICATED_STREAM_LIMIT,
    ) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="apnsim-"))
        self.host = host
        self._requested_port = port
        self.environment = Environment(environment)
        self.strict_tokens = strict_tokens
        """Unknown tokens get 400 BadDeviceToken instead of becoming online devices."""
        self.clock: Clock = clock or time.time
        self.token_update_interval = token_update_interval
        self.unauthenticated_stream_limit = unauthenticated_stream_limit
        self.stream_limit = stream_limit

        self.keyring = ProviderKeyring()
        self.faults = FaultBook()
        self.devices = DeviceRegistry(self.clock, late_delivery=self._late_delivery_due)
        self.log = RequestLog()
        self.accepted: list[Push] = []
        self.connections: list[ConnectionInfo] = []

        self._dispatcher = Dispatcher(self)
        self._live: set[APNsConnection] = set()
        self._server: asyncio.Server | None = None
        self._tls: TLSMaterial | None = None
        self._connection_ids = itertools.count(1)

    # lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        self._tls = generate_tls_material(self.directory, issuer="apnsim")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection,
            self.host,
            self._requested_port,
            ssl=server_ssl_context(self._tls),
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Close the listener, send GOAWAY {"reason": "Shutdown"} on every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        live = list(self._live)
        for connection in live:
            connection.go_away(str(Reason.SHUTDOWN), ErrorCodes.NO_ERROR)
        if live:
            await asyncio.wait([asyncio.ensure_future(c.closed.wait()) for c in live], timeout=grace)
        for connection in list(self._live):
            connection.reset()
        await server.wait_closed()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def __aenter__(self) -> APNsSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _new_connection(self) -> APNsConnection:
        info = ConnectionInfo(id=next(self._connection_ids), peer=None, opened_at=self.clock())
        self.connections.append(info)
        connection = APNsConnection(
            info,
            self._dispatcher.serve,
            unauthenticated_stream_limit=self.unauthenticated_stream_limit,
            stream_limit=self.stream_limit,
            on_closed=self._live.discard,
            clock=self.clock,
        )
        self._live.add(connection)
        return connection

    # where clients connect

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> str:
        """``host:port``, the value for APNS_ENDPOINT."""
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """PEM of the CA that signed the server certificate, the value for APNS_CA_FILE."""
        if self._tls is None:
            raise RuntimeError("the simulator is not running")
        return str(self._tls.ca_file)

    # provider keys

    def register_key(
        self, team_id: str, key_id: str, public_key_pem: str, bundle_ids: Iterable[str] | None = None
    ) -> ProviderKey:
        """Trust ES256 provider tokens signed by this key (a private PEM is accepted too).

        With *bundle_ids*, pushes to other apps get 400 TopicDisallowed.
        """
        return self.keyring.register(team_id, key_id, public_key_pem, bundle_ids)

    def create_key(self, team_id: str, key_id: str, bundle_ids: Iterable[str] | None = None) -> SigningKey:
        """Generate a key pair, register its public half, and hand back both halves."""
        key = generate_signing_key(team_id, key_id)
        self.register_key(team_id, key_id, key.public_pem, bundle_ids)
        return key

    def revoke_key(self, key_id: str) -> None:
        self.keyring.revoke(key_id)

    # devices

    def add_device(
        self, topic: str, token: str | None = None, *, environment: Environment | str | None = None, online: bool = True
    ) -> Device:
        """A device whose app registered *token* for *topic* (``bundle.voip`` for PushKit)."""
        env = Environment(environment) if environment is not None else self.environment
        return self.devices.add(topic, env, token=token, online=online)

    def device(self, token: str) -> Device:
        device = self.devices.get(token)
        if device is None:
            raise KeyError(token)
        return device

    def purge_expired(self) -> list[Drop]:
        return self.devices.purge_expired()

    # faults

    def inject(self, fault: Fault, token: str | None = None, times: int | None = 1) -> InjectedFault:
        """Misbehave on the next *times* requests for *token* (every token if ``None``).

        ``times=None`` makes the fault sticky until removed or cleared.
        """
        return self.faults.inject(fault, token, times)

    def remove_fault(self, entry: InjectedFault) -> None:
        self.faults.remove(entry)

    def clear_faults(self) -> None:
        self.faults.clear()

    def _late_delivery_due(self, device: Device) -> bool:
        return self.faults.take(device.token, late_delivery=True) is not None

    # records

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.log.requests

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0, since: int = 0) -> RecordedRequest:
        """First request (index >= *since*) matching *predicate*, past or future."""
        return await self.log.wait_for(predicate, timeout, since)

    async def next_request(self, predicate: Predicate = lambda r: True, timeout: float = 5.0) -> RecordedRequest:
        """The next request from now on that matches *predicate*."""
        return await self.log.wait_for(predicate, timeout, since=len(self.log))

    @property
    def open_connections(self) -> list[ConnectionInfo]:
        return [c for c in self.connections if c.open]

    @property
    def stream_count(self) -> int:
        return sum(c.streams for c in self.connections)
