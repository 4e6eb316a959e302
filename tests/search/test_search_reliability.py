"""The search under real trouble: extra workers and resumes, workers killed with -9, a database restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from gemma_ocr.search.storage import open_storage
from tests.helpers.search_helpers import LINREG, ROOT, cli_env
from tests.helpers.search_postgres import postgres, postgres_url  # noqa: F401

pytestmark = pytest.mark.slow

SPACE = {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.2},
         "l2": {"type": "uniform", "low": 0.0, "high": 0.1}}
#: Heartbeats every second; a trial without one for 4 s is a dead worker's; a database may be away for 2 s.
QUICK = {"heartbeat_interval": 1, "grace_period": 4, "storage_retry_timeout": 2}


def _search(tmp: Path, url: str, name: str, *extra: str, config: dict | None = None) -> list[str]:
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps(config or {"search_space": SPACE}))
    return [sys.executable, str(ROOT / "core" / "hyperparameter_search.py"), "--backend", LINREG, "--storage", url,
            "--study-name", name, "--resume", "--config", str(cfg), "--base-output-dir", str(tmp / "trials" / name),
            "--studies-dir", str(tmp / "studies"), "--no-progress", *extra]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, code: int = 0, timeout: float = 180) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == code, f"worker exited {proc.returncode}\n{out}\n{err[-4000:]}"
    return out, err


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def _results(tmp: Path, name: str, number: int) -> dict:
    return json.loads((tmp / "trials" / name / f"trial_{number}" / f"trial_{number}_results.json").read_text())


def _running_trial_of(proc: subprocess.Popen, tmp: Path, name: str, timeout: float = 60) -> int:
    """The number of the trial ``proc`` is running, once it runs one (read from its results files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for path in (tmp / "trials" / name).glob("trial_*/trial_*_results.json"):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced right now
                continue
            if doc["state"] == "RUNNING" and doc["worker"].endswith(f":{proc.pid}"):
                return doc["trial_number"]
        time.sleep(0.05)
    raise AssertionError(f"no trial of worker {proc.pid} started within {timeout} s")


def _params(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


# ---------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed_flags", [[], ["--sampler-seed", "5"]], ids=["unseeded", "sampler-seed"])
def test_three_workers_propose_six_distinct_points_and_train_with_the_config_seed(tmp_path, seed_flags):
    """The config's "seed" is the training seed, not the sampler's: workers of one study do not replay each other."""
    url = f"journal:{tmp_path / 'study.log'}"
    cmd = _search(tmp_path, url, "three", "--search-mode", "random", "--n-trials", "2", *seed_flags,
                  config={"search_space": SPACE, "seed": 42})
    for proc in [_start(cmd) for _ in range(3)]:
        _finish(proc)
    trials = _trials(url, "three")
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(set(_params(trials))) == 6, _params(trials)
    assert {_results(tmp_path, "three", t.number)["metrics"]["seed"] for t in trials} == {42}


def test_a_resumed_study_proposes_new_points_and_seed_flags_mean_what_they_say(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies' / 'again.db'}"
    config = {"search_space": SPACE, "seed": 42}
    first = subprocess.run(_search(tmp_path, url, "again", "--search-mode", "random", "--n-trials", "2",
                                   "--sampler-seed", "3", config=config), cwd=ROOT, env=cli_env(), capture_output=True,
                           text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run(_search(tmp_path, url, "again", "--search-mode", "random", "--n-trials", "2",
                                     "--sampler-seed", "3", "--seed", "7", config=config), cwd=ROOT, env=cli_env(),
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(url, "again")
    assert len(trials) == 4 and len(set(_params(trials))) == 4, _params(trials)
    assert [_results(tmp_path, "again", n)["metrics"]["seed"] for n in range(4)] == [42, 42, 7, 7]


# ---------------------------------------------------------------------------------------------- killed workers


def _storage_url(kind: str, tmp: Path, request) -> str:
    if kind == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"journal:{tmp / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp / 'studies' / 'k.db'}"


def _kill_one_of_two(tmp: Path, cmd: list[str], name: str) -> tuple[int, tuple[str, str]]:
    """Start two workers, kill the first with SIGKILL while it runs a trial; the number of that trial and the
    survivor's output."""
    victim, survivor = _start(cmd), _start(cmd)
    killed = _running_trial_of(victim, tmp, name)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    return killed, _finish(survivor)


def _check_killed_trial(tmp: Path, name: str, trials, killed: int) -> optuna.trial.FrozenTrial:
    """The killed trial failed, ran again under a new number with the same parameters, and its file says so."""
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[killed].state == TrialState.FAIL
    again = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE and again[0].params == trials[killed].params
    doc = _results(tmp, name, killed)
    assert doc["state"] == "FAIL" and doc["retried_as"] == again[0].number, doc
    assert "stopped (no heartbeat for over 4 s)" in doc["error"] and f"trial {again[0].number}" in doc["error"]
    assert _results(tmp, name, again[0].number)["retry_of"] == killed
    return again[0]


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_a_killed_workers_trial_is_failed_retried_and_the_cap_is_still_reached(tmp_path, kind, request):
    url, name = _storage_url(kind, tmp_path, request), f"killed-{kind}"
    cmd = _search(tmp_path, url, name, "--search-mode", "random", "--n-trials", "10", "--max-total-trials", "3",
                  config={"search_space": SPACE, "epochs": 2, "sleep_s": 0.6, **QUICK})
    started = time.monotonic()
    killed, (out, err) = _kill_one_of_two(tmp_path, cmd, name)
    trials = _trials(url, name)
    _check_killed_trial(tmp_path, name, trials, killed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3 and len(trials) == 4  # 3 counted + the killed one
    assert f"trial {killed} failed: its worker" in err and "Traceback" not in err
    assert time.monotonic() - started < 60


def test_a_killed_workers_grid_point_is_run_on_a_journal_file(tmp_path):
    url, name = f"journal:{tmp_path / 'grid.log'}", "killed-grid"
    space = {"learning_rate": {"type": "categorical", "choices": [0.01, 0.03, 0.1]}}
    cmd = _search(tmp_path, url, name, "--search-mode", "grid",
                  config={"search_space": space, "epochs": 2, "sleep_s": 0.6, **QUICK})
    killed, _ = _kill_one_of_two(tmp_path, cmd, name)
    trials = _trials(url, name)
    _check_killed_trial(tmp_path, name, trials, killed)
    done = sorted(t.params["learning_rate"] for t in trials if t.state == TrialState.COMPLETE)
    assert done == [0.01, 0.03, 0.1]
    from gemma_ocr.search.study_summary import summarize

    summary = summarize(optuna.load_study(study_name=name, storage=open_storage(url)), {}, 3)
    retry = next(t.number for t in trials if t.system_attrs.get("failed_trial") == killed)
    assert summary["failures"] == [{"trial": killed, "error": f"its worker stopped (no heartbeat); run again as trial {retry}"}]
    again = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "this run: 0 trial(s)" in again.stdout, again.stderr


# ---------------------------------------------------------------------------------------------- database restarts


def test_workers_ride_out_a_postgres_restart(postgres, tmp_path):  # noqa: F811
    name = "restart"
    config = {"search_space": SPACE, "epochs": 4, "sleep_s": 0.5, "heartbeat_interval": 1, "grace_period": 30,
              "storage_retry_timeout": 20}
    cmd = _search(tmp_path, postgres.url, name, "--search-mode", "random", "--n-trials", "10",
                  "--max-total-trials", "4", config=config)
    workers = [_start(cmd), _start(cmd)]
    _running_trial_of(workers[0], tmp_path, name)
    postgres.stop()
    try:
        time.sleep(4)
    finally:
        postgres.start()
    errs = [_finish(w)[1] for w in workers]
    assert all("Traceback" not in e for e in errs), errs
    assert any("unreachable" in e and "reachable again" in e for e in errs), errs
    trials = _trials(postgres.url, name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, (errs, [t.user_attrs for t in trials])


def test_a_longer_outage_stops_the_worker_in_one_line_and_the_resume_leaves_no_trial_running(postgres, tmp_path):  # noqa: F811
    name = "outage"
    slow = {"search_space": SPACE, "epochs": 40, "sleep_s": 0.25, "heartbeat_interval": 1, "grace_period": 5,
            "storage_retry_timeout": 2}
    worker = _start(_search(tmp_path, postgres.url, name, "--search-mode", "random", "--n-trials", "1", config=slow))
    running = _running_trial_of(worker, tmp_path, name)
    postgres.stop()
    try:
        out, err = _finish(worker, code=2, timeout=60)
    finally:
        postgres.start()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lost the study storage" in lines[0] and "for more than 2 s" in lines[0], err
    assert "--resume" in lines[0] and "Traceback" not in err
    assert _results(tmp_path, name, running)["state"] == "FAIL"
    assert _trials(postgres.url, name)[running].state == TrialState.RUNNING  # nobody could tell the database
    time.sleep(5)  # the trial's last heartbeat is older than the grace period now
    quick = dict(slow, epochs=1, sleep_s=0)
    _finish(_start(_search(tmp_path, postgres.url, name, "--search-mode", "random", "--n-trials", "1", config=quick)))
    trials = _trials(postgres.url, name)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs.get("failed_trial") == running and trials[1].params == trials[running].params
