"""docs/ios-client.md against docs/ios/CallService.swift: every Swift line the guide
shows is a line of the sample file, so the guide's snippets are one declared whole."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def swift_blocks(markdown: str) -> list[str]:
    return re.findall(r"```swift\n(.*?)```", markdown, re.S)


def test_every_swift_line_of_the_guide_is_in_the_sample_file() -> None:
    sample = {line.strip() for line in (DOCS / "ios" / "CallService.swift").read_text().splitlines()}
    blocks = swift_blocks((DOCS / "ios-client.md").read_text())
    assert len(blocks) >= 10
    missing = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("// …") and line.strip() not in sample
    ]
    assert missing == []


def test_the_guide_keeps_the_socket_for_a_call_and_names_the_setup() -> None:
    guide = (DOCS / "ios-client.md").read_text()
    assert "close the WebSocket when going to the background" not in guide.lower()
    assert "Keep the socket open for the whole life of a call" in guide
    for needed in (
        "PKPushRegistry",
        "Voice over IP",
        "Push Notifications",
        "CXProviderConfiguration",
        "provider(_:didActivate:)",
        "NSAllowsLocalNetworking",
        "expires_at",
        "call.ended",
    ):
        assert needed in guide, needed
