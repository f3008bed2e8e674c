"""Running sipp (apt-get install -y sip-tester) on loopback, for the SIP stack's and the
SIP gateway's tests. sipp missing is a failure, not a skip."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests import interop


async def run_sipp(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """sipp's exit status, 0 only when every call of the scenario succeeded, and its output
    with the tails of the error and message logs it wrote in `cwd`."""
    process = await asyncio.create_subprocess_exec(
        interop.program("sipp", "sip-tester"),
        *args,
        "-i",
        "127.0.0.1",
        "-nostdin",
        "-timeout",
        str(int(timeout)),
        "-timeout_error",
        "-trace_err",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout + 15)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    text = out.decode(errors="replace")
    for log in sorted(cwd.glob("*_errors.log")) + sorted(cwd.glob("*_messages.log")):
        text += f"\n--- {log.name}\n{log.read_text(errors='replace')[-6000:]}"
    assert process.returncode is not None
    return process.returncode, text
