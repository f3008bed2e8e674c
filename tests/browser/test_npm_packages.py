"""`python3 dev.py test` installs the browser tests' npm packages with `npm ci`, once per
package-lock.json: with node_modules matching the lock, npm is not run at all (offline)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from tests import interop

ROOT = Path(__file__).resolve().parents[2]


def dev_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project(root: Path, name: str) -> Path:
    root.mkdir()
    (root / "package.json").write_bytes(orjson.dumps({"name": name, "private": True}))
    lock = {"name": name, "lockfileVersion": 3, "requires": True, "packages": {"": {"name": name}}}
    (root / "package-lock.json").write_bytes(orjson.dumps(lock))
    return root


@pytest.mark.interop
def test_npm_ci_runs_once_per_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    interop.started("npm")
    dev = dev_py()
    here = project(tmp_path / "browser", "lock-test")
    calls: list[list[str]] = []
    real_run = subprocess.run

    def run(args: list[str], **kwargs: Any) -> Any:
        calls.append(args)
        return real_run(args, **kwargs)

    monkeypatch.setattr(dev.subprocess, "run", run)
    dev.ensure_browser_packages(here)
    assert calls and calls[0][:2] == ["npm", "ci"]
    assert (here / "node_modules" / ".installed").exists()

    dev.ensure_browser_packages(here)  # the lock is unchanged: npm is not run again
    assert len(calls) == 1

    lock = orjson.loads((here / "package-lock.json").read_bytes())
    lock["name"] = lock["packages"][""]["name"] = "lock-test"
    (here / "package-lock.json").write_bytes(orjson.dumps(lock, option=orjson.OPT_INDENT_2))
    dev.ensure_browser_packages(here)  # a new lock: installed again
    assert len(calls) == 2


def test_the_repository_pins_jssip_3_13() -> None:
    lock = orjson.loads((ROOT / "tests" / "browser" / "package-lock.json").read_bytes())
    assert lock["packages"]["node_modules/jssip"]["version"].startswith("3.13.")
