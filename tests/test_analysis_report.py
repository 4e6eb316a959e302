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
from search_helpers import run_cli, settings


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
    from gemma_ocr.settings import ConfigParser

    parser = ConfigParser(AnalyzeArguments, config_file=False)
    args, _ = parser.parse_settings(["--study-name", "a", "--compare", "b", "c", "--top-n", "3", "--output-dir", "r"])
    assert (args.study_name, args.compare, args.top_n, str(args.output_dir)) == ("a", ["b", "c"], 3, "r")
    for argv, line in ((["--study-name", "a", "--top-n", "x"], "--top-n must be an integer, got 'x'"),
                       (["--top-n", "3"], "--study-name is required: the study to analyse")):
        with pytest.raises(GemmaOcrError) as e:
            parser.parse_settings(argv)
        assert str(e.value) == line
