"""The `interop` marker: a test that starts a third-party program (sipp, baresip,
Chromium, npm, esbuild, SIPVicious, Kamailio, HAProxy, coturn, an extra redis-server or
redis-sentinel) or a node in a process of its own. `python3 dev.py test -m "not interop"` is then the fast lane, and the
whole suite stays what CI runs.

The helpers that start such a program call `started()` (or `program()`, which also finds
it), which fails a test that starts one without the marker, so the fast lane never quietly
grows a slow test."""

from __future__ import annotations

import shutil

import pytest

_current: pytest.Item | None = None


def running(item: pytest.Item | None) -> None:
    global _current
    _current = item


def started(program: str) -> None:
    if _current is not None and _current.get_closest_marker("interop") is None:
        pytest.fail(f"{_current.nodeid} starts {program}: mark it @pytest.mark.interop", pytrace=False)


def program(name: str, package: str) -> str:
    """The path of `name`, from Debian's `package`, for a test about to start it. A
    program missing fails the test: `python3 dev.py test` installs them all."""
    started(name)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `apt-get install -y {package}` (python3 dev.py test does)")
    return path
