"""docs/protocol.md against voip/protocol.py: the frame types the guide names for the
device's WebSocket are exactly the members of FrameType, each in the direction it says."""

from __future__ import annotations

import re
from pathlib import Path

from voip.protocol import MESSAGE_TYPES, FrameType

PROTOCOL = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def section(start: str, end: str) -> str:
    return PROTOCOL.split(start, 1)[1].split(end, 1)[0]


def documented_client_messages() -> set[str]:
    return set(re.findall(r"^#### `([a-z._]+)`", section("### Client → server", "### Server → client"), re.M))


def documented_server_frames() -> set[str]:
    frames = section("### Server → client", "### Errors")
    replies = re.search(r"^Replies \(see above\): (.*)$", frames, re.M)
    assert replies is not None
    events = frames.split("| Frame | Sent to |", 1)[1].split("Examples:", 1)[0]
    table = re.findall(r"^\| `([a-z._]+)` \|", events, re.M)
    hello = re.findall(r"\*\*`([a-z._]+)`\*\* first", section("### Frames", "### Client → server"))
    return set(re.findall(r"`([a-z._]+)`", replies.group(1))) | set(table) | set(hello)


def test_the_client_messages_in_the_docs_are_the_ones_the_server_accepts() -> None:
    assert documented_client_messages() == MESSAGE_TYPES
    assert len(MESSAGE_TYPES) == 7


def test_every_frame_type_in_the_docs_is_a_member_of_the_enum_and_back() -> None:
    server = documented_server_frames()
    assert {"hello", "ack", "error", "call.incoming", "reconnect"} <= server
    assert documented_client_messages() | server == {t.value for t in FrameType}
