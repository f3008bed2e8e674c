"""Where a node's CPU goes under status load: py-spy samples, summed by function."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TOP = 15
ROOT = Path(__file__).resolve().parent.parent


def py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


@dataclass
class Spy:
    """py-spy recording a process for a fixed time, its stacks going to `out`."""

    process: subprocess.Popen[bytes]
    out: Path
    seconds: float

    def collect(self, focus: str = "call_status", raw_copy: Path | None = None) -> list[str]:
        """Waits for the recording to end; its summary (`summarise`)."""
        try:
            _, err = self.process.communicate(timeout=self.seconds + 30)
            if self.process.returncode != 0 or not self.out.exists():
                return [f"(py-spy failed: {err.decode().strip()[-300:]})"]
            raw = self.out.read_text()
            if raw_copy is not None:
                raw_copy.write_text(raw)
            return summarise(raw, focus)
        finally:
            shutil.rmtree(self.out.parent, ignore_errors=True)


def spy_on(pid: int, seconds: float) -> Spy | None:
    """Starts recording `pid` for `seconds` (None: py-spy is not installed)."""
    binary = py_spy()
    if binary is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="bench-spy-")) / "stacks.txt"
    process = subprocess.Popen(
        [
            binary,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, round(seconds))),
            "-r",
            "250",
            "--nolineno",
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Spy(process, out, seconds)


NOT_INSTALLED = "(py-spy not installed: `.venv/bin/pip install py-spy` for a profile)"


def profile_during(pid: int, seconds: float, load: Callable[[], object]) -> list[str]:
    spy = spy_on(pid, seconds)
    if spy is None:
        return [NOT_INSTALLED]
    load()
    return spy.collect()


def _short(frame: str) -> str:
    # "name (/long/path/site-packages/pkg/mod.py)" -> "name (pkg/mod.py)"
    match = re.fullmatch(r"(.*) \((.*)\)", frame)
    if not match:
        return frame
    path = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", match[2])
    path = path.removeprefix(f"{ROOT}/")
    return f"{match[1]} ({path})"


def summarise(raw: str, focus: str = "CallStatus.__call__") -> list[str]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    under_focus: Counter[str] = Counter()  # what `focus` spends its time in, one level down
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        at = next((i for i, f in enumerate(frames) if f.startswith(f"{focus} (")), None)
        if at is not None:
            under_focus[frames[at + 1] if at + 1 < len(frames) else "(self)"] += n
    if not total:
        return ["(no samples)"]

    def rows(counts: Counter[str], top: int) -> list[str]:
        # Frames in every sample (the runner, the event loop) say nothing.
        shown = [(f, n) for f, n in counts.most_common() if n < 0.99 * total][:top]
        return [f"  {100 * n / total:5.1f}%  {f}" for f, n in shown]

    return [
        f"### py-spy: {total} busy samples of the node (% of them)",
        "inclusive (a function and all it calls):",
        *rows(inclusive, TOP),
        f"inside {focus}, one level down:",
        *rows(under_focus, 10),
        "self (leaf frames):",
        *rows(own, 10),
    ]
