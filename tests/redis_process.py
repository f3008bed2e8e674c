"""A redis-server of a test's own, on a TCP port that survives its restarts, so that the
test can kill it (-9), pause it (SIGSTOP) and start it again where the nodes expect it."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from tests import interop
from tests.ports import free_port
from voip.redis_server import redis_server_binary

NO_PERSISTENCE = ("--save", "", "--appendonly", "no")
AOF = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


class RedisProcess:
    def __init__(self, directory: Path, *options: str, password: str = "") -> None:
        self.directory = directory
        self.options = (options or NO_PERSISTENCE) + (("--requirepass", password) if password else ())
        self.password = password or None
        self.port = free_port()
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0" if password else f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        interop.started("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1, socket_connect_timeout=1
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.process.poll() is None, self.log()
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    # connecting, or loading its append-only file
                    assert time.monotonic() < deadline, f"redis-server did not start\n{self.log()}"
                    time.sleep(0.02)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        """A plain client of this server (the test's admin): `with process.client() as c`."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)  # a paused server dies as well
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
