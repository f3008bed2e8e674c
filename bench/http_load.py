"""HTTP load with wrk: fixed concurrency and duration, requests rotated over a set of paths."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Rotating over several calls keeps one hot Redis key from flattering the figures.
_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class LoadResult:
    rps: float
    requests: int
    errors: int  # non-2xx responses plus socket errors
    p50_ms: float
    p99_ms: float
    server_cpu_s: float = 0.0  # CPU the server process used meanwhile, where the caller measured it


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: wrk not found; install it with `apt-get install -y wrk`")
    return found


def run_wrk(
    base_url: str,
    paths: list[str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_SCRIPT % ", ".join(f'"{p}"' for p in paths))
    try:
        command = [
            wrk_binary(),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
        ]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        # Bounded: wrk stops after -d; the timeout only guards a hung wrk.
        output = subprocess.run(
            [*command, base_url], capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    return _parse(output)


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"wrk: unexpected duration {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def _parse(output: str) -> LoadResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and total and p50 and p99):
        raise ValueError(f"wrk: unexpected output:\n{output}")
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non_2xx[1])
    if socket_errors := re.search(r"Socket errors: (.*)", output):
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors[1]))
    return LoadResult(float(rps[1]), int(total[1]), errors, _duration_ms(p50[1]), _duration_ms(p99[1]))
