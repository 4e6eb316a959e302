"""Shared fixtures: the repository root, a CLI runner, synthetic OCR data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.programs import REPO, assert_one_line_error, run_cli  # noqa: F401 (fixtures and tests use them)

REPORTED_LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes",
                      "liger-kernel", "optuna", "pillow", "numpy")


def pytest_terminal_summary(terminalreporter) -> None:
    """End the run with the versions it ran against: results move with transformers/TRL/PEFT releases."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} -"

    terminalreporter.write_line("versions: " + ", ".join(installed(n) for n in REPORTED_LIBRARIES))


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """A small raw dataset (40 lines) rendered once per test session; returns its ocr.json."""
    from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("raw_data")
    generate_dataset(out, SyntheticConfig(n_samples=40, seed=7))
    return out / "ocr.json"


# Fixtures of the merge/serve/evaluate tests (tests/helpers/eval_fixtures.py), registered once per session.
from tests.helpers.eval_fixtures import *  # noqa: E402,F401,F403
# Deprecated calls of ours fail the test that made them (tests/helpers/deprecation_watch.py; pyproject's filterwarnings).
from tests.helpers.deprecation_watch import *  # noqa: E402,F401,F403
