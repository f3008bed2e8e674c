"""The running service against its own /openapi.json, with schemathesis: no 500, every
status code documented, every body as the schema says; as a device and as an operator."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest
import schemathesis

from tests.conftest import RunningNode, register

pytestmark = pytest.mark.interop

ST = Path(sys.executable).with_name("st")


async def schemathesis_run(node: RunningNode, token: str, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(ST),
        "run",
        f"{node.base_url}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,negative_data_rejection",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "10",
        "--seed",
        "1",
        # One worker: CPython 3.11.7's ast.parse is not thread-safe (gh-106905, fixed in
        # 3.11.8), and hypothesis parses schemathesis's source to describe its filters; with
        # 8 threads over 19 operations every run met "AST constructor recursion depth
        # mismatch" (16 operations happened to pass). About 20 s longer here.
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--request-timeout",
        "5",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()


async def test_the_schema_is_valid_openapi_3_1(node: RunningNode) -> None:
    response = await node.http().get("/openapi.json")
    assert response.status_code == 200
    schema = schemathesis.openapi.from_dict(response.json())
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    assert {
        "PUT /v1/devices/{device_id}",
        "GET /v1/calls/{call_id}/status",
        "GET /v1/ice-servers",
        "GET /v1/ops/calls",
        "GET /v1/ops/calls/{call_id}",
        "GET /v1/ops/devices/{user}",
        "GET /readyz",
    } <= operations


async def test_the_service_keeps_its_contract_for_devices_and_operators(node: RunningNode) -> None:
    await register(node, "st-user", "phone")
    runs = await asyncio.gather(
        *(schemathesis_run(node, node.auth.mint("st-user", role)) for role in ("device", "operator"))
    )
    for code, output in runs:
        assert code == 0, output
        print(output)


async def test_unicode_digits_are_not_numbers(node: RunningNode) -> None:
    """str.isdigit() is true for '²' and '١', which int() refuses: found by the fuzzer."""
    client = node.http()
    ops = {"Authorization": f"Bearer {node.auth.mint('ops', 'operator')}"}
    call_id = uuid.uuid4()
    for path, params, headers, documented in [
        (f"/v1/calls/{call_id}/status", {"cap": "²", "device_id": "d"}, {}, {401}),
        (f"/v1/calls/{call_id}/status", {"cap": "١٢.x", "device_id": "d"}, {}, {401}),
        ("/v1/ops/calls", {"since": "²"}, ops, {422}),
        ("/v1/ops/calls", {"limit": "١"}, ops, {422}),
        ("/v1/ops/calls", {"cursor": "²:x"}, ops, {422}),
    ]:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code in documented, (path, params, response.text)


async def test_the_status_route_says_report_to_callkit_first_then_ask(node: RunningNode) -> None:
    # The rule that keeps the app alive: PushKit's handler reports the call before it
    # returns, before any request. The OpenAPI text and the iOS guide say the same.
    schema = (await node.http().get("/openapi.json")).json()
    description = schema["paths"]["/v1/calls/{call_id}/status"]["get"]["description"]
    assert description.startswith("Report the push's call to CallKit first, then ask this")
    assert "Ask this first" not in description
    guide = (Path(__file__).parents[2] / "docs" / "ios-client.md").read_text()
    assert "## 2. The invite push: report first, then ask" in guide
    assert "Ask this first" not in guide
