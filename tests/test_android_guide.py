"""docs/android-client.md and docs/push.md against the FCM sender: every data field a
message carries is the one the guide names, and the guide names the setup."""

from __future__ import annotations

import re
import time
from pathlib import Path

from voip.push import Caller, Push, PushKind
from voip.push.fcm import PRIORITY, FCMNotifier

DOCS = Path(__file__).resolve().parent.parent / "docs"


def fields(push: Push) -> set[str]:
    return set(FCMNotifier.request(push).data)


def test_the_guide_names_every_data_field_the_invite_carries() -> None:
    guide = (DOCS / "android-client.md").read_text()
    table = guide.split("Its `data`, all strings:", 1)[1].split("In `onMessageReceived`", 1)[0]
    named = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    address = {"platform": "android", "token": "t"}
    invite = Push(PushKind.INVITE, "c", address, time.time() + 5, caller=Caller("a", "A"), status_url="u")
    assert named == fields(invite)
    cancel = Push(PushKind.CANCEL, "c", address, time.time() + 5, reason="remote_ended")
    assert fields(cancel) == {"type", "call_id", "reason", "sent_at"}
    assert f'android.priority: "{PRIORITY}"' in guide
    for needed in (
        "ConnectionService",
        "CallsManager",
        "CallStyle",
        "USE_FULL_SCREEN_INTENT",
        "status_url",
        "expires_at",
        "call.cancelled",
        "call.ended",
        "device.reregister",
        "onNewToken",
    ):
        assert needed in guide, needed


def test_push_md_documents_the_fcm_settings_and_answers() -> None:
    push = (DOCS / "push.md").read_text()
    for needed in ("FCM_CREDENTIALS_FILE", "FCM_PROJECT_ID", "FCM_ENDPOINT", "UNREGISTERED", "INVALID_ARGUMENT"):
        assert needed in push, needed
