"""What a newcomer sees: `python -m voip run` prints a human banner on stderr once ready
(VOIP_BANNER=on; `dev.py run` turns it on), every other line stays JSON; `GET /` lists
the routes; `dev.py run` on embedded defaults turns SIP on, on a free port."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest

from tests.conftest import SECRET
from tests.ports import free_port
from voip.banner import RULE, TITLE

ROOT = Path(__file__).resolve().parent.parent


def dev_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def banner_node(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    # The environment `dev.py run` gives a node on embedded defaults, with our Redis.
    env = dev_py().run_environment(
        {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "APNS_KEY_FILE",
                "APNS_APPS",
                "APNS_ENDPOINT",
                "VOIP_CONFIG",
                "REDIS_URL",
                "SIP_ENABLED",
                "SIP_PORT",
                "VOIP_BANNER",
            )
        }
    )
    env.update({"REDIS_URL": redis_url, "VOIP_REDIS_PREFIX": prefix, "VOIP_JWT_SECRET": SECRET, "PORT": str(port)})
    err = tmp_path / "stderr"
    out = tmp_path / "stdout"
    with err.open("wb") as err_file, out.open("wb") as out_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "voip", "run"], cwd=tmp_path, env=env, stdout=out_file, stderr=err_file
        )
        try:
            deadline = time.monotonic() + 30
            while RULE not in err.read_text().split(TITLE, 1)[-1]:
                assert process.poll() is None, err.read_text()
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", err
        finally:
            process.terminate()
            process.wait(10)
    output = out.read_text() + err.read_text()
    assert "Traceback" not in output, output


def test_dev_run_on_embedded_defaults_turns_sip_and_the_banner_on() -> None:
    run_environment = dev_py().run_environment
    assert run_environment({}) == {"VOIP_BANNER": "on", "SIP_ENABLED": "true", "SIP_PORT": "0"}
    # Configured: nothing is switched on behind the operator's back.
    assert "SIP_ENABLED" not in run_environment({"REDIS_URL": "redis://r:6379"})
    assert "SIP_ENABLED" not in run_environment({"APNS_KEY_FILE": "/k.p8"})
    assert "SIP_ENABLED" not in run_environment({"APNS_APPS": '{"com.example.a": {}}'})
    assert run_environment({"SIP_ENABLED": "false", "VOIP_BANNER": "off"}) == {
        "SIP_ENABLED": "false",
        "VOIP_BANNER": "off",
    }
    assert run_environment({"SIP_PORT": "5070"})["SIP_PORT"] == "5070"


@pytest.mark.interop
def test_the_banner_says_where_everything_is(banner_node: tuple[str, Path]) -> None:
    base, err = banner_node
    lines = err.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if TITLE in line) - 1
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == RULE)
    block = "\n".join(lines[start : end + 1])
    assert lines[start] == RULE
    for expected in (
        f"{base}/ops",
        f"{base}/openapi.json",
        f"{base}/v1/calls/<call_id>/status",
        "python3 dev.py token alice",
        "python3 dev.py token ops --role operator",
        "NO REAL PHONE RECEIVES ANYTHING",
        f"{base}/v1/ops/simulator/pushes",
        f"{base}/v1/ops/simulator/fcm",
        f"{base.replace('http', 'ws', 1)}/v1/sip (subprotocol sip)",
    ):
        assert expected in block, (expected, block)
    # Every line but the banner's is a JSON log line.
    for line in filter(None, lines[:start] + lines[end + 1 :]):
        assert isinstance(orjson.loads(line), dict), line

    # SIP is on, on the free port the banner names, and answers there.
    found = re.search(r"SIP +on: udp/tcp 127\.0\.0\.1:(\d+)", block)
    assert found, block
    sip_port = int(found.group(1))
    assert sip_port != 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(5)
        udp.bind(("127.0.0.1", 0))
        local = udp.getsockname()[1]
        options = (
            f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {uuid.uuid4().hex}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        udp.sendto(options.encode(), ("127.0.0.1", sip_port))
        assert udp.recv(65535).startswith(b"SIP/2.0 200")

    # GET /: an index of links, no token needed, no data.
    index = httpx.get(f"{base}/", timeout=5)
    assert index.status_code == 200 and index.headers["content-type"].startswith("application/json")
    links = index.json()["links"]
    assert links["ops_page"]["href"] == "/ops" and links["openapi"]["href"] == "/openapi.json"
    assert links["call_status"]["href"] == "/v1/calls/{call_id}/status"
    for link in ("ops_page", "openapi", "health"):
        assert httpx.get(base + links[link]["href"], timeout=5).status_code == 200


def test_dev_py_token_mints_a_token_outside_the_venv(tmp_path: Path) -> None:
    """`python3 dev.py token ops --role operator`, the command the docs and the /ops login
    hint give, run by a python3 that is not the venv's: dev.py hands it to the venv."""
    import hashlib

    from voip.auth import Authenticator

    stamp = tmp_path / "installed"
    stamp.write_text(hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest())
    # The venv is this test's interpreter; everything else is dev.py as shipped.
    script = (
        "import sys, pathlib; sys.argv = ['dev.py', 'token', 'ops', '--role', 'operator']; "
        f"import importlib.util as u; s = u.spec_from_file_location('dev', {str(ROOT / 'dev.py')!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); "
        f"m.PYTHON = pathlib.Path({sys.executable!r}); m.STAMP = pathlib.Path({str(stamp)!r}); m.main()"
    )
    env = {**os.environ, "VOIP_JWT_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    env.pop("VOIP_CONFIG", None)
    done = subprocess.run(["/usr/bin/python3", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    principal = Authenticator(SECRET).verify(done.stdout.strip())
    assert (principal.user_id, principal.role) == ("ops", "operator")
