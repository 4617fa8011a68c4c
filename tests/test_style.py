"""Formatting and lint cannot drift: ruff (lint + format) and snakefmt, configured in
pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hang_guard import HANG_GUARD_S
from workflow_copy import REPO

CHECKS = {
    "ruff lint": ["ruff", "check", "--no-cache", "."],
    "ruff format": ["ruff", "format", "--check", "--no-cache", "."],
    "snakefmt": ["snakefmt", "--check", "Snakefile", "rules"],
}


@pytest.mark.parametrize("name", CHECKS)
def test_code_is_formatted_and_lint_clean(name):
    command = [sys.executable, "-m", *CHECKS[name]]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, f"{' '.join(CHECKS[name])}:\n{result.stdout}{result.stderr}"


def test_ruff_would_catch_an_unused_import(tmp_path):
    # the configuration is live: the same command fails on a file that breaks a selected rule
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    command = [
        sys.executable,
        "-m",
        "ruff",
        "check",
        "--no-cache",
        "--config",
        str(REPO / "pyproject.toml"),
        str(bad),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 1 and "F401" in result.stdout
