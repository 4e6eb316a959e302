"""The system packages the tests need are installed by .ci/run and named in the README, never by a test."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.system_packages import SYSTEM_PACKAGES

ROOT = Path(__file__).resolve().parents[1]


def test_no_test_runs_apt_get():
    """An apt-get run inside pytest collided with another apt run on the machine, and its test skipped."""
    runs_apt = re.compile(r"""["']apt(-get)?["']\s*,""")
    offenders = [p.name for p in sorted((ROOT / "tests").rglob("*.py")) if runs_apt.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_ci_installs_and_the_readme_names_every_system_package():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "tests/helpers/system_packages.py" in ci and "apt-get install" in ci
    assert ci.index("apt-get install") < ci.index("python -m pytest")  # installed before the tests run
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [p for p in SYSTEM_PACKAGES if p not in readme] == []
