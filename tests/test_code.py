"""The code's habits, in the fast tier: ruff's lint rules and format, mypy on src/ and stages/
(the settings of both in pyproject.toml), and the import contract (test_layers.py).
One command runs them all: `python -m pytest tests/test_code.py tests/test_layers.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT

TOOLS = Path(sys.executable).parent
CODE = ["src", "stages", "tests", "benchmarks", "docs/generate.py", ".ci/per_file.py"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_to_lint():
    result = run(str(TOOLS / "ruff"), "check", "--no-cache", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted_as_ruff_formats_it():
    result = run(str(TOOLS / "ruff"), "format", "--check", "--no-cache", *CODE)
    assert result.returncode == 0, f"run `ruff format` on: {result.stdout}{result.stderr}"


def test_mypy_finds_no_type_error_in_src_or_stages():
    result = run(str(TOOLS / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr
