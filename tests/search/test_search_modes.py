"""Search end to end on a cheap real objective: modes, pruning, failures, resume, exports, CLI."""

from __future__ import annotations

import json

import optuna
import pytest

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.runner import resolve_settings, run_search
from tests.helpers.search_helpers import LINREG, LINREG_SPACE, run_cli, settings

GRID_SPACE = {
    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 0.2, "grid": [0.01, 0.05]},
    "epochs": {"type": "int", "low": 2, "high": 2},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum"]},
}


def load(s):
    return optuna.load_study(study_name=s.study_name, storage=s.storage)


def results(s, n):
    return json.loads((s.base_output_dir / f"trial_{n}" / f"trial_{n}_results.json").read_text())


@pytest.mark.parametrize("mode", ["bayesian", "random"])
def test_sampling_modes_run_trials_and_export_the_best(tmp_path, mode):
    s = settings(tmp_path, f"m-{mode}", search_mode=mode, n_trials=5, sampler_seed=3)
    summary = run_search(s)
    study = load(s)
    assert summary.trials_run == [0, 1, 2, 3, 4] and summary.counts["complete"] == 5
    assert study.best_value == summary.best_value and study.best_trial.number == summary.best_trial
    for t in study.trials:
        r = results(s, t.number)
        assert r["state"] == "COMPLETE" and r["params"] == t.params and r["metrics"]["val_mse"] == t.value
        assert r["error"] is None and (s.base_output_dir / f"trial_{t.number}" / "weights.npy").is_file()
        assert len(t.intermediate_values) == t.params["epochs"]  # one report per epoch reached the study
    best = json.loads((s.studies_dir / f"{s.study_name}_best_params.json").read_text())
    assert best["best_params"] == study.best_params and best["best_value"] == study.best_value
    assert best["best_trial_number"] == study.best_trial.number and best["search_mode"] == mode
    assert (best["n_trials"], best["n_complete"], best["n_pruned"], best["n_failed"]) == (5, 5, 0, 0)
    assert best["study_name"] == s.study_name and best["timestamp"]
    config = json.loads((s.studies_dir / f"{s.study_name}_best_config.json").read_text())
    assert config.pop("_objective").startswith(f"val_mse (minimize): {study.best_value:.6g} in trial {study.best_trial.number}")
    assert config == study.best_params


def test_bayesian_search_states_its_tpe_settings_and_a_resumed_study_keeps_its_own(tmp_path):
    """Optuna 5 turned TPE's multivariate and constant_liar on by default (both off in 4.x): the search states its
    settings and stores them with the study, so a study samples the same way on either, and a resume keeps its own."""
    from gemma_ocr.search.study_setup import SAMPLER_ATTR, TPE_SETTINGS, tpe_sampler

    s = settings(tmp_path, "tpe", search_mode="bayesian", n_trials=2, sampler_seed=3)
    run_search(s)
    study = load(s)
    assert study.user_attrs[SAMPLER_ATTR] == TPE_SETTINGS
    assert TPE_SETTINGS["multivariate"] is True and TPE_SETTINGS["constant_liar"] is True
    last = study.trials[-1]
    assert tpe_sampler(study, 0).infer_relative_search_space(study, last)  # multivariate: the parameters jointly
    study.set_user_attr(SAMPLER_ATTR, {**TPE_SETTINGS, "multivariate": False})  # a study made with independent TPE
    assert tpe_sampler(study, 0).infer_relative_search_space(study, last) == {}
    run_search(settings(tmp_path, "tpe", search_mode="bayesian", n_trials=1, sampler_seed=3, resume=True))
    assert load(s).user_attrs[SAMPLER_ATTR] == {**TPE_SETTINGS, "multivariate": False}


def test_seeded_random_search_is_reproducible(tmp_path):
    a = run_search(settings(tmp_path / "a", "same", search_mode="random", n_trials=3, sampler_seed=11))
    b = run_search(settings(tmp_path / "b", "same", search_mode="random", n_trials=3, sampler_seed=11))
    pa = [t.params for t in load(settings(tmp_path / "a", "same")).trials]
    pb = [t.params for t in load(settings(tmp_path / "b", "same")).trials]
    assert pa == pb and a.best_value == b.best_value


def test_grid_covers_every_point_exactly_once_and_resume_finds_it_complete(tmp_path):
    s = settings(tmp_path, "grid", space=GRID_SPACE, search_mode="grid", n_trials=None, n_jobs=2)
    summary = run_search(s)
    seen = [(t.params["learning_rate"], t.params["epochs"], t.params["optimizer"]) for t in load(s).trials]
    expected = {(lr, 2, opt) for lr in (0.01, 0.05) for opt in ("sgd", "momentum")}
    assert len(seen) == 4 and set(seen) == expected and summary.counts["complete"] == 4
    again = run_search(settings(tmp_path, "grid", space=GRID_SPACE, search_mode="grid", n_trials=None, resume=True))
    assert again.trials_run == [] and len(load(s).trials) == 4


def test_grid_resume_runs_only_the_points_left(tmp_path):
    first = run_search(settings(tmp_path, "g2", space=GRID_SPACE, search_mode="grid", n_trials=3))
    assert first.trials_run == [0, 1, 2]
    rest = run_search(settings(tmp_path, "g2", space=GRID_SPACE, search_mode="grid", n_trials=None))
    assert rest.trials_run == [3]
    points = [tuple(sorted(t.params.items())) for t in load(settings(tmp_path, "g2")).trials]
    assert len(points) == 4 and len(set(points)) == 4


def test_median_pruner_prunes_a_planted_bad_trial(tmp_path):
    s = settings(
        tmp_path, "prune", search_mode="random", n_trials=4, sampler_seed=0,
        space={"l2": {"type": "categorical", "choices": [0.0]}},  # identical good trials, one planted bad one
        fixed={"epochs": 6, "learning_rate": 0.03, "bad_trials": [3]},
        pruner="median", pruner_n_startup_trials=2, pruner_n_warmup_steps=1,
    )
    summary = run_search(s)
    trials = load(s).trials
    assert [t.state for t in trials[:3]] == [optuna.trial.TrialState.COMPLETE] * 3
    bad = trials[3]
    assert bad.state == optuna.trial.TrialState.PRUNED and summary.counts["pruned"] == 1
    assert max(bad.intermediate_values) < 5  # stopped early, not after all 6 epochs
    r = results(s, 3)
    assert r["state"] == "PRUNED" and "pruned at step" in r["pruned"] and r["intermediate"]


def test_failed_trial_is_recorded_with_its_error_and_the_study_goes_on(tmp_path):
    s = settings(tmp_path, "fail", search_mode="random", n_trials=4, sampler_seed=1, fixed={"fail_trials": [1]})
    summary = run_search(s)
    trials = load(s).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["error"].startswith("out of memory (RuntimeError): CUDA out of memory")
    r = results(s, 1)
    assert r["state"] == "FAIL" and "out of memory" in r["error"] and r["params"] == trials[1].params
    best = json.loads((s.studies_dir / "fail_best_params.json").read_text())
    assert best["n_failed"] == 1 and best["n_complete"] == 3 and summary.counts["failed"] == 1


def test_resume_adds_trials_to_the_same_study_and_reuses_its_space(tmp_path):
    cfg = tmp_path / "search.json"
    cfg.write_text(json.dumps({"search_space": LINREG_SPACE, "n_samples": 120}), encoding="utf-8")
    common = dict(studies_dir=tmp_path / "studies")
    over = {"backend": LINREG, "n_trials": 3, "base_output_dir": str(tmp_path / "trials"), "progress": False}
    first = run_search(resolve_settings(cfg, study_name="r", overrides=over, **common))
    with pytest.raises(GemmaOcrError, match="already exists .* pass --resume"):
        resolve_settings(cfg, study_name="r", overrides=over, **common)
    # resume without --config: the stored space, fixed parameters and backend come back
    resumed = resolve_settings(None, study_name="r", resume=True, overrides={"n_trials": 2, "progress": False}, **common)
    assert set(resumed.search_space) == set(LINREG_SPACE) and resumed.fixed == {"n_samples": 120}
    assert resumed.backend == LINREG and str(resumed.base_output_dir) == str(tmp_path / "trials")
    second = run_search(resumed)
    assert first.trials_run == [0, 1, 2] and second.trials_run == [3, 4]
    study = optuna.load_study(study_name="r", storage=resumed.storage)
    assert len(study.trials) == 5 and len(optuna.get_all_study_names(resumed.storage)) == 1


def test_resume_with_an_incompatible_distribution_is_explained(tmp_path):
    run_search(settings(tmp_path, "chg", n_trials=2))
    changed = dict(LINREG_SPACE, optimizer={"type": "categorical", "choices": ["sgd", "adam"]})
    with pytest.raises(GemmaOcrError) as e:
        run_search(settings(tmp_path, "chg", space=changed, n_trials=1, resume=True))
    text = str(e.value)
    assert "'optimizer' is now categorical(['sgd', 'adam'])" in text and "another --study-name" in text
    kind = dict(LINREG_SPACE, epochs={"type": "uniform", "low": 2.0, "high": 6.0})
    with pytest.raises(GemmaOcrError, match="'epochs' is now uniform"):
        run_search(settings(tmp_path, "chg", space=kind, n_trials=1, resume=True))


def test_parallel_jobs_and_a_study_wide_cap(tmp_path):
    s = settings(tmp_path, "cap", search_mode="random", n_trials=10, n_jobs=2, max_total_trials=5)
    summary = run_search(s)
    numbers = sorted(t.number for t in load(s).trials)
    assert numbers == [0, 1, 2, 3, 4] and summary.trials_run == numbers


def test_cli_runs_a_search_and_reports_bad_input_in_one_line(tmp_path):
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"search_space": LINREG_SPACE}), encoding="utf-8")
    base = ["--backend", LINREG, "--studies-dir", str(tmp_path / "st"), "--base-output-dir", str(tmp_path / "tr"),
            "--no-progress"]
    out = run_cli("hyperparameter_search.py", "--study-name", "cli", "--search-mode", "random", "--n-trials", "3",
                  "--config", str(cfg), "--sampler-seed", "1", *base)
    assert "3 trials, 3 complete" in out.stdout and "best val_mse" in out.stdout
    assert (tmp_path / "st" / "cli.db").is_file() and (tmp_path / "st" / "cli_best_config.json").is_file()
    assert (tmp_path / "tr" / "trial_2" / "trial_2_results.json").is_file()

    cfg.write_text(json.dumps({"search_space": {"learning_rate": {"type": "normal", "low": 0, "high": 1}}}))
    bad = run_cli("hyperparameter_search.py", "--study-name", "bad", "--config", str(cfg), *base, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "unknown type 'normal'" in bad.stderr

    cfg.write_text(json.dumps({"search_space": LINREG_SPACE}))
    grid = run_cli("hyperparameter_search.py", "--study-name", "g", "--search-mode", "grid", "--config", str(cfg),
                   *base, check=False)
    assert grid.returncode == 2 and "grid search needs discrete values" in grid.stderr and "Traceback" not in grid.stderr


def test_first_trial_configuration_error_stops_the_search(tmp_path):
    """A user error in the very first trial (e.g. 4-bit without CUDA) would repeat: it is recorded and stops the run."""

    class Broken:
        name, metric, direction = "broken", "loss", "minimize"

        def validate(self, fixed, space, source):
            pass

        def run_trial(self, ctx):
            raise GemmaOcrError("load_in_4bit needs a CUDA GPU")

        def export_config(self, fixed, params):
            return params

    s = settings(tmp_path, "broken", n_trials=5)
    with pytest.raises(GemmaOcrError, match="trial 0 failed and the search stopped.*load_in_4bit"):
        run_search(s, Broken())
    trials = load(s).trials
    assert len(trials) == 1 and trials[0].state.name == "FAIL" and "CUDA" in trials[0].user_attrs["error"]


def test_a_study_never_writes_into_trial_folders_of_another_study(tmp_path):
    shared = tmp_path / "trials"
    first = settings(tmp_path, "one", n_trials=2, base_output_dir=shared)
    run_search(first)
    with pytest.raises(GemmaOcrError) as e:
        run_search(settings(tmp_path, "two", n_trials=1, base_output_dir=shared))
    text = str(e.value)
    assert "holds trial folders of study 'one'" in text and "\n" not in text
    assert f"--base-output-dir {shared / 'two'}" in text and "--study-name one --resume" in text
    assert results(first, 0)["study_name"] == "one" and results(first, 1)["study_name"] == "one"
    assert not (tmp_path / "studies" / "two.db").exists()  # refused before the study was created
    assert run_search(settings(tmp_path, "one", n_trials=1, resume=True, base_output_dir=shared)).trials_run == [2]
    own = settings(tmp_path, "two", n_trials=1, base_output_dir=shared / "two")
    assert run_search(own).trials_run == [0] and results(own, 0)["study_name"] == "two"


def test_a_trial_folder_taken_by_another_study_meanwhile_is_left_alone(tmp_path):
    """Another study starting on the same folder mid-run: that trial fails, its folder is not written."""
    from tests.helpers.search_objectives import LinearRegression

    class Intruder(LinearRegression):
        def run_trial(self, ctx):
            if ctx.trial_number == 0:
                taken = ctx.output_dir.parent / "trial_1"
                taken.mkdir()
                (taken / "trial_1_results.json").write_text(json.dumps({"study_name": "other"}))
            return super().run_trial(ctx)

    s = settings(tmp_path, "mine", search_mode="random", n_trials=3)
    run_search(s, Intruder())
    assert [t.state.name for t in load(s).trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "holds trial folders of study 'other'" in load(s).trials[1].user_attrs["error"]
    assert results(s, 1) == {"study_name": "other"} and results(s, 2)["study_name"] == "mine"


def test_setup_errors_leave_no_study_behind_so_the_fixed_command_runs(tmp_path):
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"search_space": LINREG_SPACE}), encoding="utf-8")
    base = ["--study-name", "fix", "--backend", LINREG, "--config", str(cfg), "--studies-dir", str(tmp_path / "st"),
            "--base-output-dir", str(tmp_path / "tr"), "--no-progress"]
    for bad in (["--n-trials", "0"], ["--sampler-seed", "-1"], ["--search-mode", "grid"]):
        proc = run_cli("hyperparameter_search.py", *base, *bad, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
        assert not (tmp_path / "st" / "fix.db").exists()
    out = run_cli("hyperparameter_search.py", *base, "--n-trials", "1")
    assert "1 trials, 1 complete" in out.stdout


def test_grid_without_config_names_the_built_in_search_space(tmp_path):
    from tests.helpers.search_helpers import ROOT

    s = resolve_settings(None, study_name="g", studies_dir=tmp_path / "studies", overrides={"search_mode": "grid"},
                         default_config=ROOT / "configs/hyperparm_configs/default.json")
    with pytest.raises(GemmaOcrError) as e:
        run_search(s)
    text = str(e.value)
    assert text.startswith("built-in default search_space (") and "default.json has none" in text
    assert "learning_rate: grid search needs discrete values" in text and "default.json.learning_rate" not in text
    assert not (tmp_path / "studies" / "g.db").exists()
