"""Scale-out: worker processes share one study through a real PostgreSQL server or a journal file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers.search_helpers import LINREG, ROOT, cli_env
from tests.helpers.search_postgres import postgres, postgres_url  # noqa: F401

pytestmark = pytest.mark.slow


def _workers(n: int, args: list[str], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Start ``n`` search processes at once with the same arguments; wait for all of them."""
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "core" / "hyperparameter_search.py"), *args],
                         cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker exited {p.returncode}\n{out}\n{err[-3000:]}"
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _ran(proc: subprocess.CompletedProcess) -> list[int]:
    match = re.search(r"this run: \d+ trial\(s\) \[([\d, ]*)\]", proc.stdout)
    assert match, proc.stdout
    return [int(x) for x in match.group(1).split(",") if x.strip()]


def _config(tmp: Path, space: dict, **fixed) -> Path:
    path = tmp / "search.json"
    path.write_text(json.dumps({"search_space": space, "barrier_dir": str(tmp / "barrier"), "barrier_n": 2, **fixed}))
    return path


def _check_shared_study(tmp: Path, url: str, name: str, procs, expected: int) -> list[optuna.trial.FrozenTrial]:
    ran = [_ran(p) for p in procs]
    assert all(ran), f"each worker should have run trials: {ran}"
    assert not set(ran[0]) & set(ran[1]), f"a trial number was run twice: {ran}"
    assert sorted(ran[0] + ran[1]) == list(range(expected))
    from gemma_ocr.search.storage import open_storage

    storage = open_storage(url) if isinstance(url, str) else url
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert sorted(t.number for t in trials) == list(range(expected))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = set()
    for t in trials:
        r = json.loads((tmp / "trials" / f"trial_{t.number}" / f"trial_{t.number}_results.json").read_text())
        assert r["state"] == "COMPLETE" and r["params"] == t.params and r["study_name"] == name
        workers.add(r["worker"])
    assert len(workers) == 2
    return trials


def test_two_workers_share_a_postgres_study_with_a_study_wide_cap(postgres_url, tmp_path):
    space = {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.2},
             "epochs": {"type": "int", "low": 2, "high": 4}}
    args = ["--backend", LINREG, "--storage", postgres_url, "--study-name", "pg-random", "--resume",
            "--search-mode", "random", "--n-trials", "10", "--max-total-trials", "6",
            "--config", str(_config(tmp_path, space)), "--base-output-dir", str(tmp_path / "trials"),
            "--studies-dir", str(tmp_path / "studies"), "--no-progress"]
    procs = _workers(2, args)
    _check_shared_study(tmp_path, postgres_url, "pg-random", procs, expected=6)
    best = json.loads((tmp_path / "studies" / "pg-random_best_params.json").read_text())
    assert best["n_complete"] == 6 and "postgres@127.0.0.1" in best["storage"]


def test_two_workers_split_a_grid_on_postgres_each_point_once(postgres_url, tmp_path):
    space = {"learning_rate": {"type": "categorical", "choices": [0.01, 0.03, 0.1]},
             "epochs": {"type": "int", "low": 2, "high": 3}}
    args = ["--backend", LINREG, "--storage", postgres_url, "--study-name", "pg-grid", "--resume",
            "--search-mode", "grid", "--config", str(_config(tmp_path, space)),
            "--base-output-dir", str(tmp_path / "trials"), "--studies-dir", str(tmp_path / "studies"), "--no-progress"]
    trials = _check_shared_study(tmp_path, postgres_url, "pg-grid", _workers(2, args), expected=6)
    assert {(t.params["learning_rate"], t.params["epochs"]) for t in trials} == {
        (lr, ep) for lr in (0.01, 0.03, 0.1) for ep in (2, 3)}


def test_two_workers_share_a_journal_file(tmp_path):
    space = {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.2}}
    journal = tmp_path / "shared" / "study.log"
    args = ["--backend", LINREG, "--storage", f"journal:{journal}", "--study-name", "jr", "--resume",
            "--search-mode", "bayesian", "--n-trials", "2", "--config", str(_config(tmp_path, space)),
            "--base-output-dir", str(tmp_path / "trials"), "--studies-dir", str(tmp_path / "studies"), "--no-progress"]
    started = time.monotonic()
    procs = _workers(2, args)
    _check_shared_study(tmp_path, f"journal:{journal}", "jr", procs, expected=4)
    assert journal.is_file() and time.monotonic() - started < 240
