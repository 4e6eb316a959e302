"""The search optimises what OCR users measure: --objective cer on the tiny reader stores each trial's CER, prunes on
it, names it in every file it writes, and the analysis keeps studies of different objectives apart."""

from __future__ import annotations

import dataclasses
import json
import statistics

import optuna
import pytest

from tests.helpers.programs import assert_one_line_error
from gemma_ocr.layout import LAYOUT
from tests.helpers.search_helpers import ROOT, run_cli

READER = ROOT / LAYOUT.reader


@pytest.fixture(scope="module")
def cer_search(tmp_path_factory):
    """A 3-point grid of learning rates (the last one ruinous) searched by CER, with the median pruner from trial 2."""
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SHIFTED_DIGITS, generate_dataset

    tmp = tmp_path_factory.mktemp("cer-search")
    records = generate_dataset(tmp / "raw", dataclasses.replace(SHIFTED_DIGITS, n_samples=224, seed=11))
    data = write_records(records, tmp / "data.json")
    (tmp / "search.json").write_text(json.dumps({
        "search_space": {"learning_rate": {"type": "categorical", "choices": [0.005, 0.003, 0.5]}},
        "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "model_name": str(READER), "input_data": str(data), "train_split": "train[:200]", "val_split": "train[200:]",
        "max_steps": 16, "eval_steps": 8, "save_steps": 16, "logging_steps": 8, "warmup_ratio": 0.0,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "gradient_accumulation_steps": 1,
        "finetune_vision_layers": True, "cer_eval_samples": 24, "report_to": ["none"], "seed": 1,
    }))
    common = ["--study-name", "by-cer", "--studies-dir", str(tmp / "studies"), "--base-output-dir", str(tmp / "trials")]
    proc = run_cli("hyperparameter_search.py", "--config", str(tmp / "search.json"), "--search-mode", "grid",
                   "--objective", "cer", "--no-progress", *common, timeout=600)
    return tmp, common, proc


@pytest.mark.slow
def test_a_cer_search_stores_the_trials_cer_and_prunes_on_it(cer_search):
    tmp, _, proc = cer_search
    assert "3 trials, 2 complete, 1 pruned" in proc.stdout and "best eval_cer" in proc.stdout
    study = optuna.load_study(study_name="by-cer", storage=f"sqlite:///{tmp / 'studies' / 'by-cer.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.user_attrs["metric"] == "eval_cer"
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    for trial in complete:
        metrics = json.loads((tmp / "trials" / f"trial_{trial.number}" / "train_metrics.json").read_text())
        results = json.loads((tmp / "trials" / f"trial_{trial.number}" / f"trial_{trial.number}_results.json").read_text())
        assert trial.value == metrics["eval_cer"] == results["value"] == results["metrics"]["eval_cer"]
        assert (results["objective"], results["metric"], results["direction"]) == ("cer", "eval_cer", "minimize")
        curve = {e["step"]: e["eval_cer"] for e in metrics["history"] if "eval_cer" in e}
        assert trial.intermediate_values == curve and sorted(curve) == [0, 8, 16]  # reported per evaluation

    [pruned] = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned.params["learning_rate"] == 0.5
    step = max(pruned.intermediate_values)
    assert step == 8
    assert pruned.intermediate_values[step] > statistics.median(t.intermediate_values[step] for t in complete)

    best = json.loads((tmp / "studies" / "by-cer_best_params.json").read_text())
    assert (best["metric"], best["direction"], best["objective"]) == ("eval_cer", "minimize", "cer")
    assert best["best_value"] == study.best_value == min(t.value for t in complete)
    config = json.loads((tmp / "studies" / "by-cer_best_config.json").read_text())
    assert config["_objective"].startswith(f"eval_cer (minimize): {study.best_value:.6g} in trial {study.best_trial.number}")
    assert config["learning_rate"] == study.best_params["learning_rate"]


@pytest.mark.slow
def test_the_objective_stays_the_studys_own_and_the_analysis_names_it(cer_search):
    tmp, common, _ = cer_search
    proc = run_cli("hyperparameter_search.py", "--resume", "--objective", "eval_loss", "--n-trials", "1", *common,
                   check=False)
    assert_one_line_error(proc, "study 'by-cer' optimises eval_cer; --objective eval_loss (eval_loss)")

    out = tmp / "report"
    proc = run_cli("analyze_hyperparam_results.py", "--study-name", "by-cer", "--studies-dir", str(tmp / "studies"),
                   "--output-dir", str(out))
    assert "best eval_cer" in proc.stdout and "note: importances from 2 completed trials are unreliable" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == {"value": 1.0, "meaning": "empty answer (CER 1)"}
    report = (out / "report.md").read_text()
    assert "Objective: eval_cer (minimize)" in report and "Learned nothing: empty answer (CER 1) = 1" in report

    other = optuna.create_study(study_name="by-loss", storage=f"sqlite:///{tmp / 'studies' / 'by-loss.db'}")
    other.set_user_attr("metric", "eval_loss")
    other.enqueue_trial({"x": 1.0})
    other.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    proc = run_cli("analyze_hyperparam_results.py", "--study-name", "by-cer", "--compare", "by-loss", "--studies-dir",
                   str(tmp / "studies"), "--output-dir", str(tmp / "cmp"), check=False)
    assert_one_line_error(proc, "study by-cer optimises eval_cer (lower is better), but by-loss eval_loss",
                          "cannot share one axis")


def test_an_objective_the_backend_lacks_or_cannot_measure_is_one_line(tmp_path):
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.search.backends import GemmaBackend, get_backend, use_objective
    from gemma_ocr.search.space import parse_search_space

    backend = use_objective(GemmaBackend(), "f1")
    assert (backend.objective, backend.metric, backend.direction) == ("f1", "eval_f1", "maximize")
    assert use_objective(GemmaBackend(), "eval_cer").objective == "cer"  # the metric's name works too
    with pytest.raises(GemmaOcrError, match="--objective 'wer': the gemma backend optimises eval_loss or cer or f1"):
        use_objective(GemmaBackend(), "wer")
    two = use_objective(GemmaBackend(), "cer,train_seconds")
    assert (two.objective, two.metrics, two.directions, two.metric) == (
        "cer,train_seconds", ("eval_cer", "train_seconds"), ("minimize", "minimize"), "eval_cer")
    for objective in ("cer,cer", "cer,f1,train_seconds"):
        with pytest.raises(GemmaOcrError, match="give one objective, or two different ones joined by a comma"):
            use_objective(GemmaBackend(), objective)
    with pytest.raises(GemmaOcrError, match="the khmer-cnn backend optimises char_accuracy"):
        use_objective(get_backend("khmer-cnn"), "cer")
    space = parse_search_space({"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}})
    with pytest.raises(GemmaOcrError, match="--objective cer is measured by the CER evaluation of each trial, but "
                                            "cer_eval_samples is 0 in s.json"):
        use_objective(GemmaBackend(), "cer").validate({"cer_eval_samples": 0}, space, "s.json")


def test_pan_and_scan_is_searchable_like_any_field():
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.search.backends import GemmaBackend
    from gemma_ocr.search.space import parse_search_space

    space = parse_search_space({"do_pan_and_scan": {"type": "categorical", "choices": [True, False]},
                                "pan_and_scan_max_num_crops": {"type": "int", "low": 1, "high": 4}})
    GemmaBackend().validate({"model_name": str(READER)}, space, "s.json")
    bad = parse_search_space({"pan_and_scan_min_crop_size": {"type": "int", "low": 0, "high": 64}})
    with pytest.raises(GemmaOcrError, match="pan_and_scan_min_crop_size' must be >= 1, got 0"):
        GemmaBackend().validate({}, bad, "s.json")


@pytest.mark.slow
def test_a_two_objective_search_keeps_its_pareto_front_and_the_analysis_draws_it(cer_search):
    """--objective cer,train_seconds: a study of both (no pruning there), the front in best-params, the search's
    output and the analysis; the exported configuration is the front's best by CER."""
    tmp, _, _ = cer_search
    config = json.loads((tmp / "search.json").read_text())
    config.update(max_steps=8, eval_steps=4, save_steps=8, logging_steps=4, pruner={"type": "none"})
    (tmp / "two.json").write_text(json.dumps(config))
    studies = tmp / "studies"
    proc = run_cli("hyperparameter_search.py", "--config", str(tmp / "two.json"), "--search-mode", "grid",
                   "--objective", "cer,train_seconds", "--no-progress", "--study-name", "cer-time", "--studies-dir",
                   str(studies), "--base-output-dir", str(tmp / "two-trials"), timeout=600)
    study = optuna.load_study(study_name="cer-time", storage=f"sqlite:///{studies / 'cer-time.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.user_attrs["metric"] == "eval_cer,train_seconds"
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:
        metrics = json.loads((tmp / "two-trials" / f"trial_{trial.number}" / "train_metrics.json").read_text())
        assert trial.values == [metrics["eval_cer"], metrics["train_seconds"]] and metrics["train_seconds"] > 0

    def dominated(t):
        return any(o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
                   for o in study.trials)

    front = sorted(t.number for t in study.trials if not dominated(t))
    best = json.loads((studies / "cer-time_best_params.json").read_text())
    assert sorted(p["trial"] for p in best["pareto_front"]) == front
    exported = min((t for t in study.trials if t.number in front), key=lambda t: t.values[0])
    assert best["best_trial_number"] == exported.number and best["best_values"] == exported.values
    assert [p["trial"] for p in best["pareto_front"] if p["exported"]] == [exported.number]
    assert (best["metric"], best["direction"]) == ("eval_cer,train_seconds", "minimize,minimize")
    saved = json.loads((studies / "cer-time_best_config.json").read_text())
    assert "Pareto front" in saved["_objective"] and saved["learning_rate"] == exported.params["learning_rate"]
    assert f"Pareto front ({len(front)} trials):" in proc.stdout

    out = tmp / "two-report"
    run_cli("analyze_hyperparam_results.py", "--study-name", "cer-time", "--studies-dir", str(studies), "--output-dir",
            str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert [p["trial"] for p in summary["pareto_front"]] == [p["trial"] for p in best["pareto_front"]]
    assert summary["metric"] == "eval_cer" and summary["best"]["trial"] == exported.number
    report = (out / "report.md").read_text()
    assert "## Pareto front" in report and "(pareto_front.png)" in report
    assert (out / "pareto_front.png").stat().st_size > 5000 and "Plotly.newPlot" in (out / "pareto_front.html").read_text()
