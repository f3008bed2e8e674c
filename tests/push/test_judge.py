"""APNs's answers judged into every platform's terms: outcome, retry, which token to drop."""

from __future__ import annotations

import pytest

from tests.push.conftest import invite
from voip.push import Outcome, TokenDrop, Verdict
from voip.push.apns_errors import judge

REQUEST = invite("ab" * 32)


@pytest.mark.parametrize(
    ("status", "reason", "timestamp", "outcome", "drop"),
    [
        (200, None, None, Outcome.ACCEPTED, None),
        # 410: only a token registered before APNs's timestamp is dropped.
        (410, "Unregistered", 1_700_000_000_000, Outcome.TOKEN_INVALID, TokenDrop(registered_before=1_700_000_000_000)),
        (410, "ExpiredToken", 1_700_000_000_000, Outcome.TOKEN_INVALID, TokenDrop(registered_before=1_700_000_000_000)),
        # The token itself is bad, whenever it was registered.
        (400, "BadDeviceToken", None, Outcome.REJECTED, TokenDrop(registered_before=None)),
        (400, "DeviceTokenNotForTopic", None, Outcome.REJECTED, TokenDrop(registered_before=None)),
        # Refused for reasons that are not the token's: it stays.
        (400, "BadTopic", None, Outcome.REJECTED, None),
        (403, "InvalidProviderToken", None, Outcome.REJECTED, None),
        (413, "PayloadTooLarge", None, Outcome.REJECTED, None),
        # Transient: try again within the deadline.
        (429, "TooManyRequests", None, None, None),
        (500, "InternalServerError", None, None, None),
        (503, "ServiceUnavailable", None, None, None),
    ],
)
def test_every_answer_has_a_platform_neutral_verdict(
    status: int, reason: str | None, timestamp: int | None, outcome: Outcome | None, drop: TokenDrop | None
) -> None:
    verdict = judge(REQUEST, status, reason, timestamp)
    assert (verdict.outcome, verdict.drop_token) == (outcome, drop)
    assert isinstance(verdict, Verdict)
    assert (verdict.likely_cause is None) == (status == 200)
