"""`python3 dev.py lint`: ruff's checks and formatting pass on the repository (CI runs it
before the tests), and a finding fails it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.test_banner import ROOT, dev_py

RUFF = Path(sys.executable).parent / "ruff"


def test_the_repository_passes_lint() -> None:
    assert dev_py().lint(RUFF, ROOT) == 0


def test_a_finding_or_an_unformatted_file_fails_lint(tmp_path: Path) -> None:
    lint = dev_py().lint
    (tmp_path / "pyproject.toml").write_text("[tool.ruff.lint]\nselect = ['F']\n")
    module = tmp_path / "module.py"
    module.write_text("import os\n")  # unused: F401
    assert lint(RUFF, tmp_path) == 1
    module.write_text("x  =  1\n")  # checks pass, formatting does not
    assert lint(RUFF, tmp_path) == 1
    module.write_text("x = 1\n")
    assert lint(RUFF, tmp_path) == 0
