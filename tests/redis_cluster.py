"""A real Redis Cluster for tests: six redis-server processes with `--cluster-enabled yes`
(three primaries, each with a replica) on loopback ports from tests/ports.py, each in a
directory of its own, joined by `redis-cli --cluster create`.

What a cluster does to a client, on demand:
- `kill_primary()`: SIGKILL a primary, wait until its replica is promoted and every live
  node agrees (the client meets connection errors, then MOVED to the new primary);
- `restart()`: start a killed node again from its nodes.conf: it rejoins as a replica;
- `reshard()` / `rebalance()`: `redis-cli --cluster reshard|rebalance` (MOVED afterwards);
- `begin_migration()`: one slot half-migrated, by hand, as a reshard leaves it for a
  moment: keys already moved answer ASK on the source.

The bus port is given with `--cluster-port` (Redis 7), also from tests/ports.py: the
default, port + 10000, would often land in the ephemeral range or past 65535.

`LocalCluster(tls=certificates)` serves TLS only (`--port 0`, `--tls-port`): clients, the
cluster bus (`--tls-cluster yes`) and replication (`--tls-replication yes`), and asks
clients for a certificate (tests/redis_tls.py). `password=` sets `requirepass` (and
`masterauth`, for the replicas). The helpers' own clients and redis-cli reach the nodes
the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from tests import interop
from tests.ports import free_port
from tests.redis_tls import Certificates, cli_tls_args, client_tls_options, server_tls_args
from voip.redis_server import redis_server_binary

SLOTS = 16384


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    tls: Certificates | None = None
    password: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password or None,
            socket_timeout=2,
            socket_connect_timeout=2,
            **(client_tls_options(self.tls) if self.tls is not None else {}),
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def node_id(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def role(self) -> str:
        with self.client() as client:
            return str(client.execute_command("ROLE")[0].decode())

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Migration:
    """One slot half-way between two primaries, moved key by key with MIGRATE."""

    cluster: LocalCluster
    slot: int
    source: ClusterNode
    target: ClusterNode

    def move(self, keys: Iterable[str]) -> None:
        with self.source.client() as source:
            for key in keys:
                assert self.cluster.slot_of(key) == self.slot, key
                source.execute_command("MIGRATE", "127.0.0.1", self.target.port, key, 0, 5000)

    def finish(self) -> None:
        """The rest of the slot's keys, then the slot itself, to the target; every node told."""
        with self.source.client() as source:
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100):
                source.execute_command("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", *keys)
        target_id = self.target.node_id()
        for node in (self.target, self.source, *self.cluster.live_primaries()):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
        self.cluster.wait_settled()


@dataclass
class LocalCluster:
    primaries: int = 3
    replicas_per_primary: int = 1
    node_timeout_ms: int = 2000
    tls: Certificates | None = None
    password: str = ""
    nodes: list[ClusterNode] = field(default_factory=list)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="voip-cluster-")))

    # -- what a client is told -----------------------------------------------------
    @property
    def startup_nodes(self) -> str:
        """`host:port,...`: the form of the REDIS_CLUSTER_NODES setting."""
        return ",".join(node.address for node in self.nodes)

    # -- life ----------------------------------------------------------------------
    def start(self, timeout: float = 60) -> LocalCluster:
        interop.started("redis-server --cluster-enabled")
        for index in range(self.primaries * (1 + self.replicas_per_primary)):
            node = ClusterNode(
                free_port(), free_port(), self.directory / f"node-{index}", tls=self.tls, password=self.password
            )
            node.directory.mkdir(parents=True)
            self.nodes.append(node)
            self._spawn(node)
        for node in self.nodes:
            self._wait_ping(node, timeout)
        self._cli(
            "--cluster",
            "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas_per_primary),
            "--cluster-yes",
        )
        self.wait_settled(timeout)
        self.wait_synced(timeout)
        return self

    def stop(self, keep_logs_in: Path | None = None) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.send_signal(signal.SIGCONT)
                node.process.kill()
                node.process.wait(10)
        if keep_logs_in is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for node in self.nodes:
                (keep_logs_in / f"redis-{node.port}.log").write_text(node.log())
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the cluster says -----------------------------------------------------
    @staticmethod
    def slot_of(key: str) -> int:
        return int(key_slot(key.encode()))

    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive()]

    def live_primaries(self) -> list[ClusterNode]:
        return [node for node in self.live_nodes() if node.role() == "master"]

    def node_at(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def owner(self, slot: int) -> ClusterNode:
        """The primary that serves `slot`, as the live nodes agree (wait_settled first)."""
        with self.live_nodes()[0].client() as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return self.node_at(int(primary[1]))
        raise LookupError(f"slot {slot} is not served")

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        primary_id = primary.node_id()
        replicas = []
        for node in self.live_nodes():
            with node.client() as client:
                role = client.execute_command("ROLE")
            if role[0] == b"slave" and int(role[2]) == primary.port:
                replicas.append(node)
        assert all(self._replicates(node, primary_id) for node in replicas)
        return replicas

    def wait_settled(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok, every slot is served by a live primary,
        and all live nodes agree on which one (`redis-cli --cluster check`)."""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            problem = self._unsettled()
            if not problem:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster did not settle within {timeout}s: {problem}")

    def wait_synced(self, timeout: float = 30) -> None:
        """Until every primary's replicas hold its writes. A replica freshly synced gets no
        write for up to a second (a diskless sync streams only after the replica's first
        ACK): a primary killed then takes them with it."""
        deadline = time.monotonic() + timeout
        for primary in self.live_primaries():
            while (held := self.wait_replicated(primary, 1000)) < self.replicas_per_primary:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{held} replica(s) of {primary.address} in sync within {timeout}s")

    def wait_replicated(self, primary: ClusterNode, timeout_ms: int = 2000) -> int:
        """Until `primary`'s replicas hold its writes so far; returns how many do. WAIT counts
        from its own connection's last write: hence one, to a key of `primary`'s own slots."""
        with primary.client() as client:
            served = [
                (int(start), int(end))
                for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS")
                if int(owner[1]) == primary.port
            ]
            key = next(
                key
                for key in (f"replicated:{{{n}}}" for n in range(SLOTS * 16))
                if any(start <= self.slot_of(key) <= end for start, end in served)
            )
            client.set(key, "1", px=max(timeout_ms, 1000))
            return int(client.execute_command("WAIT", self.replicas_per_primary, timeout_ms))

    # -- what is done to it --------------------------------------------------------
    def kill_primary(
        self, primary: ClusterNode | None = None, timeout: float = 30
    ) -> tuple[ClusterNode, ClusterNode, float]:
        """SIGKILL `primary` (default: the first live one) and wait until one of its replicas
        serves its slots and every live node agrees. Returns (killed, promoted, seconds)."""
        victim = primary or self.live_primaries()[0]
        replicas = {node.port for node in self.replicas_of(victim)}
        assert replicas, f"{victim.address} has no replica to promote"
        assert victim.process is not None
        began = time.monotonic()
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        deadline = began + timeout
        while True:
            promoted = [node for node in self.live_nodes() if node.port in replicas and node.role() == "master"]
            if promoted and not self._unsettled():
                return victim, promoted[0], time.monotonic() - began
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica of {victim.address} promoted within {timeout}s: {self._unsettled()}")
            time.sleep(0.05)

    def restart(self, node: ClusterNode, timeout: float = 30) -> None:
        """Start a killed node again on its port, from its own nodes.conf: it rejoins the
        cluster (as a replica, if it was failed over) and syncs."""
        assert not node.alive(), f"{node.address} is running"
        self._spawn(node)
        self._wait_ping(node, timeout)
        deadline = time.monotonic() + timeout
        while True:
            with node.client() as client:
                role = client.execute_command("ROLE")
                info = client.info("replication")
            synced = role[0] == b"master" or info.get("master_link_status") == "up"
            if synced and not self._unsettled():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.address} did not rejoin within {timeout}s: {self._unsettled()}")
            time.sleep(0.05)

    def reshard(self, source: ClusterNode, target: ClusterNode, slots: int) -> None:
        """`redis-cli --cluster reshard`: move `slots` slots, keys and all, from `source` to `target`."""
        self._cli(
            "--cluster",
            "reshard",
            source.address,
            "--cluster-from",
            source.node_id(),
            "--cluster-to",
            target.node_id(),
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
        )
        self.wait_settled()

    def rebalance(self, **weights: float) -> None:
        """`redis-cli --cluster rebalance`, with optional weights by port (`{"7001": 2}` as
        `rebalance(**{"7001": 2})`); weight 0 empties a primary."""
        args = ["--cluster", "rebalance", self.live_primaries()[0].address, "--cluster-use-empty-masters"]
        if weights:
            args += [
                "--cluster-weight",
                *(f"{self.node_at(int(port)).node_id()}={weight}" for port, weight in weights.items()),
            ]
        self._cli(*args)
        self.wait_settled()

    def begin_migration(self, slot: int, target: ClusterNode) -> Migration:
        """Mark `slot` IMPORTING on `target` and MIGRATING on its owner, and move no key yet:
        a key already moved then answers ASK on the source, a key not moved is served there."""
        source = self.owner(slot)
        assert source.port != target.port, "the slot is on the target already"
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id())
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id())
        return Migration(self, slot, source, target)

    # -- inside --------------------------------------------------------------------
    def _spawn(self, node: ClusterNode) -> None:
        if self.tls is not None:
            listen = (
                *("--port", "0", "--tls-port", str(node.port)),
                *("--tls-cluster", "yes", "--tls-replication", "yes"),
                *server_tls_args(self.tls, client_certificates=True),
            )
        else:
            listen = ("--port", str(node.port))
        auth = ("--requirepass", self.password, "--masterauth", self.password) if self.password else ()
        node.process = subprocess.Popen(
            [
                redis_server_binary(),
                *listen,
                *auth,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(node.bus_port),
                "--cluster-config-file",
                str(node.directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                # A replica however stale may take over: a test's failover must not depend on timing.
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node.directory),
                "--logfile",
                str(node.directory / "redis.log"),
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _cli(self, *args: str) -> str:
        connect = cli_tls_args(self.tls) if self.tls is not None else ()
        if self.password:
            connect += ("-a", self.password, "--no-auth-warning")
        result = subprocess.run(["redis-cli", *connect, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def _unsettled(self) -> str:
        """What keeps the cluster from being settled, or "" when it is."""
        live = self.live_nodes()
        live_ports = {node.port for node in live}
        views = set()
        for node in live:
            try:
                with node.client() as client:
                    if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return f"{node.address}: cluster_state not ok"
                    slots = client.execute_command("CLUSTER", "SLOTS")
                    ids = client.execute_command("CLUSTER", "NODES").decode()
            except redis.RedisError as exc:
                return f"{node.address}: {exc!r}"
            for line in ids.splitlines():
                _, address, flags, *_ = line.split()
                if int(address.split("@")[0].rsplit(":", 1)[1]) in live_ports and "fail" in flags:
                    return f"{node.address} marks {address} {flags}"
            owners = tuple(sorted((int(start), int(end), int(primary[1])) for start, end, primary, *_ in slots))
            if sum(end - start + 1 for start, end, _ in owners) != SLOTS:
                return f"{node.address} sees {sum(end - start + 1 for start, end, _ in owners)} slots served"
            if any(port not in live_ports for _, _, port in owners):
                return f"{node.address} still names a dead primary"
            views.add(owners)
        if len(views) != 1:
            return "the live nodes disagree about the slots"
        return ""

    @staticmethod
    def _replicates(node: ClusterNode, primary_id: str) -> bool:
        with node.client() as client:
            myself = next(
                line for line in client.execute_command("CLUSTER", "NODES").decode().splitlines() if "myself" in line
            )
        return myself.split()[3] == primary_id

    @staticmethod
    def _wait_ping(node: ClusterNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"redis-server on {node.port} exited with {node.process.returncode}\n{node.log()}")
            try:
                with node.client() as client:
                    client.ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {node.port} did not answer\n{node.log()}")
