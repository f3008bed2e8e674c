"""Every line the node writes is one JSON object, even when threads log at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

# structlog on one thread, the stdlib (as google-auth's refresh thread logs) on another,
# both to stderr redirected to a file, as under a process manager.
SCRIPT = """
import logging, threading, structlog
from voip import logs
logs.configure("info")
def ours():
    log = structlog.get_logger("voip")
    for i in range(5000):
        log.info("ours", i=i)
def library():
    log = logging.getLogger("google.auth")
    for i in range(5000):
        log.warning("library %d", i)
threads = [threading.Thread(target=ours), threading.Thread(target=library)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_lines_from_two_threads_never_interleave(tmp_path: Path) -> None:
    out = tmp_path / "node.log"
    with out.open("wb") as file:
        subprocess.run([sys.executable, "-c", SCRIPT], stdout=file, stderr=file, check=True, timeout=60)
    lines = out.read_text().splitlines()
    assert len(lines) == 10_000
    events = [orjson.loads(line)["event"] for line in lines]
    assert events.count("ours") == 5000
