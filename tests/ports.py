"""Ports for servers that must be told a number before they start (sipp, baresip, a node's
SIP listener in another process).

A port that the kernel hands out for `bind(0)` lies in the ephemeral range, where a suite
that opens thousands of client connections will soon have it taken again: the next TCP
connect may use it as its local port before the server binds it. So the ports come from
below the ephemeral range, free for UDP and TCP at once (SIP servers bind both), and each
is handed out once per process. Servers that can report what they bound are given 0
instead (`SipEndpoint(..., 0)`, `-p 0` for a sipp UAC).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
from pathlib import Path

_LOW = 20000  # above the well-known and most registered service ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _candidates() -> itertools.cycle[int]:
    ephemeral_low, ephemeral_high = _ephemeral_range()
    ports = [p for p in range(_LOW, 65536) if not ephemeral_low <= p <= ephemeral_high]
    # Concurrent processes (the bench's, two suites on one machine) start far apart.
    start = (os.getpid() * 7919) % len(ports)
    return itertools.cycle(ports[start:] + ports[:start])


_next = _candidates()
_handed_out: set[int] = set()


def _free_for_both(port: int, host: str) -> bool:
    with contextlib.ExitStack() as stack:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            probe = stack.enter_context(socket.socket(socket.AF_INET, kind))
            if kind == socket.SOCK_STREAM:
                # The server will set SO_REUSEADDR too; a port in TIME_WAIT is usable.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port outside the ephemeral range, free for both TCP and UDP on `host` now, and
    never handed out before by this process."""
    for _ in range(65536):
        port = next(_next)
        if port in _handed_out:
            continue
        if _free_for_both(port, host):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port outside the ephemeral range")
