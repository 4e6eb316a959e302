"""Helpers of the search/analysis tests: settings for a cheap objective, running the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

LINREG = "tests.helpers.search_objectives:LinearRegression"
LINREG_SPACE = {
    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.2},
    "epochs": {"type": "int", "low": 2, "high": 6, "step": 1},
    "l2": {"type": "uniform", "low": 0.0, "high": 0.1},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum"]},
}


def cli_env() -> dict[str, str]:
    """Environment for the programs in core/: the library and the test objectives importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "lib"), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    return env


def run_cli(script: str, *args: str, cwd: Path | None = None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``core/<script>`` with ``args``; fail the test with its output when it exits non-zero (``check``)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "core" / script), *args],
        cwd=cwd or ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def settings(tmp: Path, name: str = "s", space: dict[str, Any] | None = None, **kw: Any):
    """SearchSettings for the linear-regression objective with everything under ``tmp`` (trials in ``trials/{name}``)."""
    from gemma_ocr.search.config import SearchSettings
    from gemma_ocr.search.space import parse_search_space

    values: dict[str, Any] = dict(
        study_name=name,
        storage=f"sqlite:///{tmp / 'studies' / f'{name}.db'}",
        backend=LINREG,
        search_space=parse_search_space(space or LINREG_SPACE),
        n_trials=4,
        base_output_dir=tmp / "trials" / name,
        studies_dir=tmp / "studies",
        pruner="none",
        progress=False,
    )
    values.update(kw)
    return SearchSettings(**values)
