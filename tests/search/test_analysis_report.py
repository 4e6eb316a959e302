"""analyze_hyperparam_results.py: every figure as PNG and HTML, tables, summary, report, comparison, fallbacks."""

from __future__ import annotations

import csv
import json
import re

import optuna
import pytest
from PIL import Image

from gemma_ocr.search.analysis import FIGURES, analyze
from gemma_ocr.search.runner import run_search
from tests.helpers.search_helpers import run_cli, settings


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two finished studies: one with pruned and failed trials, one plain."""
    tmp = tmp_path_factory.mktemp("analysis")
    main = settings(tmp, "main", search_mode="random", n_trials=9, sampler_seed=2, fixed={"fail_trials": [4]},
                    pruner="median", pruner_n_startup_trials=3, pruner_n_warmup_steps=1)
    run_search(main)
    run_search(settings(tmp, "other", search_mode="bayesian", n_trials=4, sampler_seed=3))
    return tmp, main


def _check_png(path):
    with Image.open(path) as im:
        im.load()
        assert im.size[0] > 200 and im.size[1] > 100


def test_report_writes_every_figure_table_and_comparison(studies):
    tmp, main = studies
    out = tmp / "report"
    proc = run_cli("analyze_hyperparam_results.py", "--study-name", "main", "--compare", "other",
                   "--studies-dir", str(main.studies_dir), "--output-dir", str(out), "--top-n", "3")
    assert "study main: 9 trials" in proc.stdout and "importance:" in proc.stdout and "other: best" in proc.stdout

    for name in (*FIGURES, "comparison"):
        _check_png(out / f"{name}.png")
        html = (out / f"{name}.html").read_text()
        assert len(html) > 1000 and "plotly.min.js" in html and "Plotly.newPlot" in html
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # shared, so the pages open offline

    study = optuna.load_study(study_name="main", storage=main.storage)
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    rows = list(csv.DictReader((out / "top_trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [t.number for t in complete[:3]]

    summary = json.loads((out / "summary.json").read_text())
    states = {s: sum(1 for t in study.trials if t.state.name.lower() == s) for s in ("complete", "pruned", "fail")}
    assert {k: summary["states"][k] for k in states} == states and states["fail"] == 1
    assert summary["best"]["trial"] == study.best_trial.number and summary["objective"]["count"] == states["complete"]
    assert summary["objective"]["min"] == pytest.approx(study.best_value)
    assert abs(sum(v["importance"] for v in summary["parameters"].values()) - 1.0) < 1e-6
    assert summary["failures"][0]["trial"] == 4 and "out of memory" in summary["failures"][0]["error"]
    assert [r["study"] for r in summary["comparison"]] == ["main", "other"]

    report = (out / "report.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", report))
    assert {f"{n}.png" for n in (*FIGURES, "comparison")} <= links and {f"{n}.html" for n in FIGURES} <= links
    assert all((out / link).is_file() for link in links)
    assert "## Top 3 trials" in report and "## Study comparison" in report and "trial 4: out of memory" in report


def test_few_trials_fall_back_gracefully_and_a_missing_study_is_one_line(tmp_path):
    s = settings(tmp_path, "tiny", n_trials=1)
    run_search(s)
    report = analyze("tiny", tmp_path / "r", studies_dir=s.studies_dir)
    assert any("at least 2 completed trials" in n for n in report.notes)
    for name in FIGURES:
        _check_png(tmp_path / "r" / f"{name}.png")
        assert (tmp_path / "r" / f"{name}.html").stat().st_size > 500
    assert "at least 2 completed trials" in (tmp_path / "r" / "report.md").read_text()

    proc = run_cli("analyze_hyperparam_results.py", "--study-name", "nope", "--studies-dir", str(s.studies_dir), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no study database" in proc.stderr and "nope.db" in proc.stderr
    proc = run_cli("analyze_hyperparam_results.py", "--study-name", "nope", "--storage", s.storage, check=False)
    assert proc.returncode == 2 and "study 'nope' not found" in proc.stderr and "tiny" in proc.stderr


def test_analyze_flags_are_read_by_the_settings_layer():
    from gemma_ocr.commands.analyze import AnalyzeArguments
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.flags import ConfigParser

    parser = ConfigParser(AnalyzeArguments, config_file=False)
    args, _ = parser.parse_settings(["--study-name", "a", "--compare", "b", "c", "--top-n", "3", "--output-dir", "r"])
    assert (args.study_name, args.compare, args.top_n, str(args.output_dir)) == ("a", ["b", "c"], 3, "r")
    for argv, line in ((["--study-name", "a", "--top-n", "x"], "--top-n must be an integer, got 'x'"),
                       (["--top-n", "3"], "--study-name is required: the study to analyse")):
        with pytest.raises(GemmaOcrError) as e:
            parser.parse_settings(argv)
        assert str(e.value) == line


def _curves_study(metric: str, values: list[float], chance: float | None = None) -> optuna.Study:
    """Four trials reporting at steps 0, 8, 16 (the last pruned at step 8), as a gemma search stores them."""
    study = optuna.create_study(study_name=f"by-{metric}", direction="minimize")
    study.set_user_attr("metric", metric)
    for value in values:
        study.enqueue_trial({"learning_rate": value})

    def objective(trial):
        lr = trial.suggest_float("learning_rate", 0.0, 10.0)
        if chance is not None:
            trial.set_user_attr("metrics", {"chance_eval_loss": chance})
        for step in (0, 8, 16):
            trial.report(lr * (1 - step / 32), step)
            if trial.number == 3 and step == 8:
                raise optuna.TrialPruned()
        return lr * 0.5

    study.optimize(objective, n_trials=len(values))
    return study


def test_the_figures_name_each_trial_count_trials_whole_and_mark_what_learning_nothing_scores(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from gemma_ocr.search.analysis import analyze_study
    from gemma_ocr.search.study_figures import history_png as _history_png, intermediate_png as _intermediate_png

    loss = _curves_study("eval_loss", [2.0, 3.0, 2.5, 4.0], chance=5.0)
    ax = _intermediate_png(loss, "eval_loss").axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:4] == ["trial 0 (complete)", "trial 1 (complete)", "trial 2 (complete)", "trial 3 (pruned)"]
    assert labels[4] == "chance: a uniform guess over 148 tokens (ln V = 5.00)"
    assert "lower is better" in ax.get_ylabel()

    fig = _history_png(loss, "eval_loss")
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks  # trial numbers, never 0.5
    assert any(line.get_label().startswith("chance") and list(line.get_ydata()) == [5.0, 5.0] for line in ax.lines)

    cer = _curves_study("eval_cer", [0.2, 0.4, 0.3, 0.6])
    ax = _intermediate_png(cer, "eval_cer").axes[0]
    assert "empty answer (CER 1)" in ax.get_legend_handles_labels()[1]

    report = analyze_study(cer, tmp_path / "r")
    assert any(n.startswith("importances from 3 completed trials are unreliable") for n in report.notes)
    assert "unreliable" in (tmp_path / "r" / "report.md").read_text()
    assert '"tickformat":"d"' in (tmp_path / "r" / "optimization_history.html").read_text()
