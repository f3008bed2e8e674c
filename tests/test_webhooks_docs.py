"""docs/webhooks.md's verification sample, run against what the service signs: a
receiver that copies it from the guide accepts our signatures and refuses forgeries."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from voip.webhooks.signing import signature, verify

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"


def guide_verify() -> Any:
    [sample] = [block for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S) if "def verify" in block]
    namespace: dict[str, Any] = {}
    # The guide's own sample, from this repository.
    exec(compile(sample, str(GUIDE), "exec"), namespace)
    return namespace["verify"]


def test_the_guide_s_sample_accepts_our_signature_and_refuses_the_rest() -> None:
    check = guide_verify()
    body = b'{"id":"c.1","type":"call.created"}'
    now = int(time.time())
    header = signature("s3cret-s3cret-s3cret", body, now)
    assert check("s3cret-s3cret-s3cret", body, header)
    assert verify("s3cret-s3cret-s3cret", body, header)
    assert not check("another-secret-0000", body, header)
    assert not check("s3cret-s3cret-s3cret", body + b" ", header)
    stale = signature("s3cret-s3cret-s3cret", body, now - 3600)
    assert not check("s3cret-s3cret-s3cret", body, stale) and not verify("s3cret-s3cret-s3cret", body, stale)
    assert not check("s3cret-s3cret-s3cret", body, "garbage") and not verify("s3cret-s3cret-s3cret", body, "garbage")


def test_every_event_type_is_in_the_guide() -> None:
    from voip.webhooks.events import EventType

    documented = set(re.findall(r"^\| `([a-z.]+)` \|", GUIDE.read_text(), re.M))
    assert {t.value for t in EventType} <= documented
