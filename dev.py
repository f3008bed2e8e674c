#!/usr/bin/env python3
"""Set-up and entry points on a fresh clone, with nothing but python3:

    python3 dev.py run     # a node on embedded defaults (its own Redis, the APNs simulator)
    python3 dev.py test    # the whole test suite, installing and starting what it needs
    python3 dev.py lint    # ruff check and ruff format --check (pyproject.toml's rules)
    python3 dev.py demo    # the ghost-call story, told by a node and simulated iPhones
    python3 dev.py token alice                 # a development bearer token (a day)
    python3 dev.py token ops --role operator   # one for /ops, /v1/ops/ and /metrics

Extra arguments go to the command: `python3 dev.py test -k status -x`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"
# Debian packages the interop and browser tests drive (tools as named on PATH: package).
SYSTEM_TOOLS = {
    "sipp": "sip-tester",
    "baresip": "baresip",
    "chromium": "chromium",
    "haproxy": "haproxy",
    "kamailio": "kamailio",
    "redis-sentinel": "redis-sentinel",
    "turnserver": "coturn",
    "npm": "npm",
}
# npm packages the browser tests load (JsSIP and esbuild), pinned by package-lock.json.
BROWSER_PACKAGES = ROOT / "tests" / "browser"


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def ensure_venv(extras: str) -> None:
    if not PYTHON.exists():
        say("creating .venv")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    say(f"installing the project and its {extras or 'runtime'} dependencies")
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target],
        check=True,
    )
    STAMP.write_text(wanted)


def ensure_system_tools() -> None:
    missing = [package for tool, package in SYSTEM_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            f"dev.py: the tests need {', '.join(missing)}; install them (Debian: apt-get install {' '.join(missing)})"
        )
    say(f"installing {', '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def ensure_browser_packages(project: Path = BROWSER_PACKAGES) -> None:
    """`npm ci` once per package-lock.json: when node_modules already matches the lock,
    nothing runs, so the tests work offline; otherwise npm takes its cache first."""
    lock = project / "package-lock.json"
    stamp = project / "node_modules" / ".installed"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say(f"installing the npm packages of {project} (npm ci)")
    subprocess.run(
        ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=project,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.parent.mkdir(exist_ok=True)  # a lock with no packages leaves none
    stamp.write_text(wanted)


def lint(ruff: Path, root: Path) -> int:
    """Both checks run, so one report shows every finding; the exit status is 1 if either failed."""
    checked = subprocess.run([str(ruff), "check"], cwd=root).returncode
    formatted = subprocess.run([str(ruff), "format", "--check"], cwd=root).returncode
    return 1 if checked or formatted else 0


def run_environment(environ: dict[str, str]) -> dict[str, str]:
    """`dev.py run` on embedded defaults (no REDIS_URL, no APNs key, no config file) is a
    development node: the human banner on, and SIP on (a free port, shown in the banner),
    since SIP peers are half of the product. Anything set explicitly wins."""
    env = dict(environ)
    env.setdefault("VOIP_BANNER", "on")
    embedded = not any(env.get(name) for name in ("REDIS_URL", "APNS_KEY_FILE", "APNS_APPS", "VOIP_CONFIG"))
    if embedded and "SIP_ENABLED" not in env:
        env["SIP_ENABLED"] = "true"
        env.setdefault("SIP_PORT", "0")
    return env


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "lint", "demo", "token"):
        raise SystemExit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    os.chdir(ROOT)
    if command in ("run", "demo", "token"):
        ensure_venv("")
        env = run_environment(dict(os.environ)) if command == "run" else dict(os.environ)
        os.execve(PYTHON, [str(PYTHON), "-m", "voip", command, *rest], env)
    ensure_venv("test")
    if command == "lint":
        raise SystemExit(lint(VENV / "bin" / "ruff", ROOT))
    ensure_system_tools()
    ensure_browser_packages()
    os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *rest])


if __name__ == "__main__":
    main()
