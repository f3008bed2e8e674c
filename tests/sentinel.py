"""A Sentinel-managed Redis for tests and the chaos run: a master, replicas and three
Sentinels, all real processes: `redis-server` for the data nodes and Debian's
`redis-sentinel <conf>` (package redis-sentinel, which dev.py installs) for the Sentinels,
on loopback ports from tests/ports.py.

`failover()` kills the master with SIGKILL (or asks for `SENTINEL FAILOVER`), waits for
the Sentinels to name a new master, and brings the old one back as its replica, so the
set can fail over again.

`SentinelRedis(tls=certificates)`: the master and replicas serve TLS only (`--port 0`,
`--tls-port`, `--tls-replication yes`); each Sentinel listens on a plain port and a TLS
port (`tls_port`) and speaks TLS to the data nodes and the other Sentinels. `password`
is the data nodes' `requirepass` (the Sentinels' `auth-pass`), `sentinel_password` the
Sentinels' own `requirepass` (their `sentinel-pass` to each other).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests import interop
from tests.ports import free_port
from tests.redis_tls import Certificates, client_tls_options, server_tls_args
from voip.redis_server import redis_server_binary

MASTER_NAME = "voipmaster"


def sentinel_binary() -> str:
    found = shutil.which("redis-sentinel")
    if found is None:
        raise RuntimeError("redis-sentinel is not installed (Debian: apt-get install redis-sentinel; dev.py does)")
    return found


@dataclass
class _Server:
    port: int
    process: subprocess.Popen[bytes] | None = None
    # How the test's own client reaches it: over TLS, with a password.
    tls: Certificates | None = None
    password: str = ""
    # A Sentinel's TLS port, beside its plain `port`.
    tls_port: int | None = None

    @property
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


@dataclass
class SentinelRedis:
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    replicas: int = 1
    sentinels: int = 3
    master_name: str = MASTER_NAME
    tls: Certificates | None = None
    password: str = ""
    sentinel_password: str = ""
    data: list[_Server] = field(default_factory=list)
    watchers: list[_Server] = field(default_factory=list)
    _dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="voip-sentinel-")))

    # -- what a node is told -------------------------------------------------------
    @property
    def sentinel_setting(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.watchers)

    @property
    def sentinel_tls_setting(self) -> str:
        return ",".join(f"127.0.0.1:{s.tls_port}" for s in self.watchers)

    def settings(self) -> dict[str, str | bool]:
        """The node settings (field names) that point at this set: over TLS to the
        Sentinels' TLS ports, with the passwords, when the set has them."""
        settings: dict[str, str | bool] = {
            "redis_sentinels": self.sentinel_setting,
            "redis_sentinel_master": self.master_name,
        }
        if self.tls is not None:
            settings.update(
                redis_sentinels=self.sentinel_tls_setting, redis_tls=True, redis_tls_ca_file=str(self.tls.ca)
            )
        if self.password:
            settings["redis_password"] = self.password
        if self.sentinel_password:
            settings["redis_sentinel_password"] = self.sentinel_password
        return settings

    def env(self) -> dict[str, str]:
        return {"REDIS_SENTINELS": self.sentinel_setting, "REDIS_SENTINEL_MASTER": self.master_name}

    # -- life ----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> SentinelRedis:
        interop.started("redis-sentinel")
        master = self._data_server(free_port())
        self._start_data(master, replica_of=None)
        self.data.append(master)
        for _ in range(self.replicas):
            replica = self._data_server(free_port())
            self._start_data(replica, replica_of=master.port)
            self.data.append(replica)
        for server in self.data:
            self._wait_ping(server, timeout)
        for index in range(self.sentinels):
            watcher = _Server(free_port(), password=self.sentinel_password)
            if self.tls is not None:
                watcher.tls_port = free_port()
            self._start_sentinel(watcher, index, master.port)
            self.watchers.append(watcher)
        deadline = time.monotonic() + timeout
        while not self._settled(master.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Sentinels did not settle: {self.describe()}")
            time.sleep(0.1)
        return self

    def stop(self, keep_logs_in: Path | None = None) -> None:
        for server in [*self.watchers, *self.data]:
            if server.alive():
                assert server.process is not None
                server.process.kill()
                server.process.wait()
        if keep_logs_in is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for log in self._dir.glob("*.log"):
                shutil.copy(log, keep_logs_in / log.name)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SentinelRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the Sentinels say ----------------------------------------------------
    def master_port(self) -> int | None:
        """The master port a majority of Sentinels name now (None if none agree)."""
        votes: dict[int, int] = {}
        for watcher in self.watchers:
            try:
                _host, port = watcher.client.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
            except (redis.RedisError, TypeError, ValueError):
                continue
            votes[int(port)] = votes.get(int(port), 0) + 1
        best = max(votes.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] > len(self.watchers) // 2 else None

    def master(self) -> _Server:
        port = self.master_port()
        return next(server for server in self.data if server.port == port)

    def wait_replicated(self, timeout_ms: int = 2000) -> int:
        """Block until every replica has the master's writes so far; returns how many did."""
        return int(self.master().client.execute_command("WAIT", self.replicas, timeout_ms))

    def failover(self, *, kill: bool = True, timeout: float = 30, settle: bool = True) -> float:
        """Lose the master (SIGKILL) or hand it over (SENTINEL FAILOVER); returns the
        seconds until the Sentinels named the new master, which then answers as one.
        `settle=False` returns then, with the killed master left dead: the set's last
        failover, 10 to 20 s sooner than waiting for the Sentinels to count it again."""
        old = self.master()
        began = time.monotonic()
        if kill:
            assert old.process is not None
            os.kill(old.process.pid, signal.SIGKILL)
            old.process.wait()
        else:
            self.watchers[0].client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        deadline = began + timeout
        while True:
            port = self.master_port()
            if port is not None and port != old.port and self._is_master(port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover within {timeout}s: {self.describe()}")
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        if not settle:
            return elapsed
        if kill:
            # Back empty, as a replica of the new master: the set can fail over again. Not
            # promotable until it holds the data: on a loaded machine a Sentinel has taken
            # the new master for down (down-after 1 s) and promoted this empty replica.
            self._start_data(old, replica_of=port, promotable=False)
            self._wait_ping(old, timeout)
        self._wait_replica_link(old, timeout)
        old.client.config_set("replica-priority", 100)
        self._wait_promotable(timeout)
        return elapsed

    def describe(self) -> str:
        parts = []
        for server in self.data:
            try:
                role = server.client.execute_command("ROLE")[0]
            except redis.RedisError as exc:
                role = repr(exc)
            parts.append(f"{server.port}={role!r}")
        return f"data {' '.join(parts)}; sentinels say {self.master_port()}"

    # -- inside --------------------------------------------------------------------
    def _data_server(self, port: int) -> _Server:
        return _Server(port, tls=self.tls, password=self.password)

    def _start_data(self, server: _Server, replica_of: int | None, *, promotable: bool = True) -> None:
        if self.tls is not None:
            listen = [
                *("--port", "0", "--tls-port", str(server.port), "--tls-replication", "yes"),
                *server_tls_args(self.tls),
            ]
        else:
            listen = ["--port", str(server.port)]
        if self.password:
            listen += ["--requirepass", self.password, "--masterauth", self.password]
        args = [
            redis_server_binary(),
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            "--dbfilename",
            f"dump-{server.port}.rdb",
            "--logfile",
            str(self._dir / f"redis-{server.port}.log"),
            # Replicas sync straight from memory, at once: full syncs take milliseconds here.
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        if not promotable:
            args += ["--replica-priority", "0"]
        server.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def _start_sentinel(self, watcher: _Server, index: int, master_port: int) -> None:
        name = self.master_name
        lines = [
            f"port {watcher.port}",
            "bind 127.0.0.1",
            f"dir {self._dir}",
            f"logfile {self._dir / f'sentinel-{index}.log'}",
            f"sentinel monitor {name} 127.0.0.1 {master_port} {self.sentinels // 2 + 1}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.tls is not None:
            options = server_tls_args(self.tls)
            lines += [f"tls-port {watcher.tls_port}", "tls-replication yes"]
            # The same options as redis-server's flags, as lines of a config file.
            lines += [f"{options[i].removeprefix('--')} {options[i + 1]}" for i in range(0, len(options), 2)]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        conf = self._dir / f"sentinel-{index}.conf"  # Sentinel rewrites its file: one each
        conf.write_text("\n".join(lines) + "\n")
        watcher.process = subprocess.Popen(
            [sentinel_binary(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ping(watcher, 10)

    def _settled(self, master_port: int) -> bool:
        for watcher in self.watchers:
            try:
                info = watcher.client.sentinel_master(self.master_name)
            except redis.RedisError:
                return False
            if int(info["port"]) != master_port or int(info["num-slaves"]) < self.replicas:
                return False
            if int(info["num-other-sentinels"]) < len(self.watchers) - 1:
                return False
        return True

    def _wait_promotable(self, timeout: float) -> None:
        """Until every Sentinel counts each replica as healthy, so a next failover can pick it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self._healthy_replicas(watcher) >= self.replicas for watcher in self.watchers):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Sentinels do not see healthy replicas: {self.describe()}")

    def _healthy_replicas(self, watcher: _Server) -> int:
        replicas = watcher.client.sentinel_slaves(self.master_name)
        return sum(1 for r in replicas if r.get("flags") == "slave" and r.get("master-link-status") == "ok")

    def _is_master(self, port: int) -> bool:
        try:
            with self._data_server(port).client as client:
                return bool(client.execute_command("ROLE")[0] == b"master")
        except redis.RedisError:
            return False

    def _wait_replica_link(self, server: _Server, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = server.client.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{server.port} did not become a replica: {self.describe()}")

    @staticmethod
    def _wait_ping(server: _Server, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(f"redis-server on {server.port} exited with {server.process.returncode}")
            try:
                server.client.ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {server.port} did not answer")
