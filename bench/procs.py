"""The processes under test: a Redis (REDIS_URL, else a private one) and bench nodes,
each node in its own process pinned to the server CPU."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from voip.auth import Authenticator
from voip.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent


def cpu_plan() -> tuple[int, int]:
    """(server CPU, load-generator CPU); -1 where there is nothing to pin to."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return -1, -1
    return cpus[1], cpus[0]


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` has used so far, user and system."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until `process` has exited, asked to already; killed after `timeout` seconds."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class NodeProcess:
    node_id: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            wait_or_kill(self.process)


@dataclass
class Cluster:
    """Redis plus the nodes started on it; everything it made is gone after `close`."""

    server_cpu: int
    # Empty: REDIS_URL from the environment, else a private redis-server.
    redis_url: str = ""
    # `host:port,...`: the nodes go to this Redis Cluster instead (REDIS_CLUSTER_NODES).
    redis_cluster_nodes: str = ""
    prefix: str = field(default_factory=lambda: f"bench-{secrets.token_hex(5)}:")
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    nodes: list[NodeProcess] = field(default_factory=list)
    _private: PrivateRedis | None = None
    _tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="voip-bench-")))

    @property
    def auth(self) -> Authenticator:
        return Authenticator(self.secret)

    def __enter__(self) -> Cluster:
        self.redis_url = self.redis_url or os.environ.get("REDIS_URL", "")
        if not (self.redis_url or self.redis_cluster_nodes):
            # Started from the load generator's CPU: the child inherits its affinity.
            self._private = PrivateRedis().start()
            self.redis_url = self._private.url
        return self

    def start_node(
        self,
        name: str,
        timeout: float = 20,
        *,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> NodeProcess:
        """`cpu`: pin this node there instead of the server CPU; `env`: its own settings;
        `root`: the checkout it runs from (bench/sip_pair.py compares two)."""
        log_path = self._tmp / f"{name}.log"
        env = {
            **os.environ,
            **(env or {}),
            "BENCH_REDIS_URL": self.redis_url,
            **({"REDIS_CLUSTER_NODES": self.redis_cluster_nodes} if self.redis_cluster_nodes else {}),
            "BENCH_PREFIX": self.prefix,
            "BENCH_SECRET": self.secret,
            "BENCH_NODE_ID": f"bench-{name}",
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.server", "--cpu", str(self.server_cpu if cpu is None else cpu)],
                cwd=root,
                env={**env, "PYTHONPATH": str(root)} if root != ROOT else env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            process.kill()
            raise RuntimeError(f"node {name} did not start: {log_path.read_text()[-2000:]}")
        node = NodeProcess(f"bench-{name}", process, int(line.split()[1]), log_path)
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{node.base_url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return node
            except OSError:
                time.sleep(0.05)
            if process.poll() is not None:
                break
        raise RuntimeError(f"node {name} not healthy: {log_path.read_text()[-2000:]}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for node in self.nodes:
            node.stop()
        try:
            client: redis.Redis | redis.RedisCluster
            if self.redis_cluster_nodes:  # it splits a many-key DEL by slot
                host, port = self.redis_cluster_nodes.split(",")[0].rsplit(":", 1)
                client = redis.RedisCluster(host=host, port=int(port))
            else:
                client = redis.Redis.from_url(self.redis_url)
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            client.close()
        finally:
            if self._private:
                self._private.stop()
            shutil.rmtree(self._tmp, ignore_errors=True)
