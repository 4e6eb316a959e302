"""Shared fixtures: the repository root, a CLI runner, synthetic OCR data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


def run_cli(script: str, *args: str, cwd: Path | None = None, timeout: float = 600, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``core/<script>`` in a fresh interpreter (``cwd`` default: the repository root)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "lib") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / "core" / script), *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The program failed with exit code 2 and one ``error:`` line naming ``fragments``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """A small raw dataset (40 lines) rendered once per test session; returns its ocr.json."""
    from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("raw_data")
    generate_dataset(out, SyntheticConfig(n_samples=40, seed=7))
    return out / "ocr.json"


# Fixtures of the merge/serve/evaluate tests (tests/eval_fixtures.py), registered once per session.
from eval_fixtures import *  # noqa: E402,F401,F403
# Deprecated calls of ours fail the test that made them (tests/deprecation_watch.py; pyproject's filterwarnings).
from deprecation_watch import *  # noqa: E402,F401,F403
