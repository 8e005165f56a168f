"""The docs' generated parts match their sources, and the README stays a short front door."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO_ROOT


def test_the_findings_table_and_the_parameters_page_are_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "docs" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_readme_is_short_and_every_page_it_links_exists():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]*)", readme)
    assert len(links) >= 8
    assert [link for link in links if not (REPO_ROOT / link).exists()] == []


def test_a_changed_figure_makes_the_check_fail(tmp_path):
    """The check is a real comparison: a README whose table was edited by hand fails it."""
    sys.path.insert(0, str(REPO_ROOT / "docs"))
    try:
        import generate
    finally:
        sys.path.remove(str(REPO_ROOT / "docs"))
    readme = (REPO_ROOT / "README.md").read_text()
    edited = readme.replace("| reference network, bf16 autocast | ", "| reference network, bf16 autocast | 9.99× | ", 1)
    assert edited != readme and generate.with_table(edited) == readme
