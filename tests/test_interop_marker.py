"""The fast lane (`-m "not interop"`) stays fast: a test that starts a third-party program
without the `interop` marker fails."""

from __future__ import annotations

import pytest

from tests import interop


def test_starting_a_program_without_the_marker_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"mark it @pytest\.mark\.interop"):
        interop.started("sipp")


@pytest.mark.interop
def test_a_marked_test_may_start_one() -> None:
    interop.started("sipp")
