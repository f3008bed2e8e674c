"""Kamailio (config/kamailio/kamailio.cfg) in front of test nodes: its own process, a
dispatcher list in the test's directory, a port from tests/ports.py. Not installed is a
failure, never a skip."""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
from pathlib import Path

import pytest

from tests.interop import started
from tests.ports import free_port

CONFIG = Path(__file__).resolve().parents[2] / "config" / "kamailio" / "kamailio.cfg"


class Kamailio:
    def __init__(self, directory: Path, node_ports: list[int]) -> None:
        self.directory = directory
        self.port = free_port()
        self.dispatcher_list = directory / "dispatcher.list"
        self.dispatcher_list.write_text("".join(f"1 sip:127.0.0.1:{port}\n" for port in node_ports))
        self.log_path = directory / "kamailio.log"
        self.process: asyncio.subprocess.Process | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    async def start(self) -> None:
        binary = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")
        if binary is None:
            pytest.fail("kamailio is not installed: run `apt-get install -y kamailio`")
        started("kamailio")
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                "-DD",
                "-E",
                "-f",
                str(CONFIG),
                "-w",
                str(self.directory),
                "-A",
                f"LISTEN=udp:127.0.0.1:{self.port}",
                "-A",
                f'DISPATCHER_LIST="{self.dispatcher_list}"',
                stdout=log,
                stderr=log,
                cwd=self.directory,
            )
        for _ in range(200):
            if self.process.returncode is not None:
                pytest.fail(f"kamailio exited ({self.process.returncode}):\n{self.log()}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", self.port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        return
                    raise
            await asyncio.sleep(0.05)
        pytest.fail(f"kamailio did not bind UDP {self.port}:\n{self.log()}")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
