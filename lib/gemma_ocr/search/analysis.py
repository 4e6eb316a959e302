"""Analysis of a finished (or running) study: importance, history, parallel coordinates, top trials.

Every figure is written twice: a PNG (matplotlib) and an interactive HTML page (plotly, sharing one
``plotly.min.js`` in the report folder, so it opens offline). ``report.md`` links them all with the
statistical summary and the top-N table; ``summary.json`` holds the same figures for programs.

The numbers come from :mod:`gemma_ocr.search.study_summary`, the figures from :mod:`gemma_ocr.search.study_figures`;
this module writes the report.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from optuna import visualization as vis
from optuna.trial import TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, atomic_write_text
from gemma_ocr.layout import LAYOUT
from gemma_ocr.reports.plotting import save_png
from gemma_ocr.search.export import jsonable, pareto_front
from gemma_ocr.search.study_figures import (
    comparison_figures,
    history_png,
    importance_figures,
    intermediate_png,
    parallel_png,
    pareto_png,
    plotly_or_placeholder,
    plotly_reference,
    save_html,
)
from gemma_ocr.search.study_summary import (
    comparison_row,
    first_objective_view,
    importance_caveat,
    importances,
    load_study,
    metric_label,
    metric_name,
    objective_label,
    objectives,
    summarize,
    top_trials,
)

FIGURES = ("param_importances", "optimization_history", "parallel_coordinate", "intermediate_values")


@dataclass
class StudyReport:
    """Files written for one study (and the comparison, when asked)."""

    study_name: str
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no completed trials_\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r)) or ["rank", "trial", "value"]
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def analyze_study(study: optuna.Study, output_dir: str | Path, top_n: int = 10) -> StudyReport:
    """Write every figure (PNG + HTML), the top-N table (CSV/Markdown), summary.json and report.md.

    A two-objective study gets its Pareto front (figure, table, summary) and the other figures of its first
    objective."""
    if len(study.directions) > 1:
        return _analyze_two_objectives(study, output_dir, top_n)
    matplotlib.use("Agg")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = StudyReport(study.study_name, out)
    metric = metric_name(study)
    label = metric_label(study)
    imp, why = importances(study)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if why:
        report.notes.append(why)
    elif importance_caveat(n_complete):
        report.notes.append(importance_caveat(n_complete))

    def history_html(s: optuna.Study) -> Any:
        fig = plotly_reference(vis.plot_optimization_history(s, target_name=metric), s)
        return fig.update_xaxes(tickformat="d", title="trial").update_yaxes(title=label)

    def curves_html(s: optuna.Study) -> Any:
        fig = plotly_reference(vis.plot_intermediate_values(s), s)
        return fig.update_xaxes(tickformat="d", title="step").update_yaxes(title=f"{label}, reported")

    png_imp, html_imp = importance_figures(imp, why, n_complete)
    figures = {
        "param_importances": (png_imp, html_imp),
        "optimization_history": (history_png(study, metric),
                                 plotly_or_placeholder(history_html, study, "Optimization history")),
        "parallel_coordinate": (parallel_png(study, metric),
                                plotly_or_placeholder(lambda s: vis.plot_parallel_coordinate(s, target_name=label), study, "Parallel coordinates")),
        "intermediate_values": (intermediate_png(study, metric),
                                plotly_or_placeholder(curves_html, study, "Intermediate values")),
    }
    for name, (png, html) in figures.items():
        report.files[f"{name}.png"] = save_png(png, out / f"{name}.png")
        report.files[f"{name}.html"] = save_html(html, out / f"{name}.html")

    rows = top_trials(study, top_n)
    report.files["top_trials.csv"] = _write_csv(rows, out / "top_trials.csv")
    report.summary = summarize(study, imp, top_n)
    report.files["summary.json"] = atomic_write_json(out / "summary.json", report.summary)
    report.files["report.md"] = atomic_write_text(out / "report.md", _report_markdown(report, rows, imp, top_n))
    return report


def _analyze_two_objectives(study: optuna.Study, output_dir: str | Path, top_n: int) -> StudyReport:
    pairs = objectives(study)
    report = analyze_study(first_objective_view(study), output_dir, top_n)
    out = report.output_dir
    front = pareto_front(study, pairs)
    html = plotly_or_placeholder(lambda s: vis.plot_pareto_front(s, target_names=[objective_label(*p) for p in pairs]), study,
                                  "Pareto front")
    report.files["pareto_front.png"] = save_png(pareto_png(study, front), out / "pareto_front.png")
    report.files["pareto_front.html"] = save_html(html, out / "pareto_front.html")
    report.summary.update(objectives=[{"metric": m, "direction": d} for m, d in pairs], pareto_front=front)
    report.files["summary.json"] = atomic_write_json(out / "summary.json", report.summary)
    imp = {k: v["importance"] for k, v in report.summary["parameters"].items() if v.get("importance") is not None}
    imp = dict(sorted(imp.items(), key=lambda kv: -kv[1]))
    report.files["report.md"] = atomic_write_text(out / "report.md", _report_markdown(
        report, top_trials(first_objective_view(study), top_n), imp, top_n))
    return report


def _report_markdown(report: StudyReport, rows: list[dict[str, Any]], imp: dict[str, float], top_n: int) -> str:
    s = report.summary
    st = s["states"]
    lines = [
        f"# Hyperparameter search: {s['study_name']}",
        "",
        f"{s['n_trials']} trials: {st['complete']} complete, {st['pruned']} pruned, {st['fail']} failed"
        + (f", {st['running']} running" if st["running"] else "") + ". Objective" + (
            "s: " + ", ".join(f"{o['metric']} ({o['direction']})" for o in s["objectives"]) if s.get("objectives")
            else f": {s['metric']} ({s['direction']})") + ".",
        "",
    ]
    if s.get("pareto_front"):
        (m1, d1), (m2, d2) = ((o["metric"], o["direction"]) for o in s["objectives"])
        lines += ["## Pareto front", "",
                  f"Two objectives: {objective_label(m1, d1)} and {objective_label(m2, d2)}. On the front, no trial is better in one "
                  f"without being worse in the other; the exported configuration is the front's best by {m1}. The "
                  f"figures below show {m1} only.", "",
                  "![Pareto front](pareto_front.png)", "", "[interactive version](pareto_front.html)", "",
                  _markdown_table([{"trial": p["trial"], **p["values"], **p["params"],
                                    "exported": "yes" if p["exported"] else ""} for p in s["pareto_front"]]), ""]
    if s.get("reference"):
        lines += [f"Learned nothing: {s['reference']['meaning']} = {s['reference']['value']:.4g} (the dotted line in "
                  "the figures).", ""]
    if s["best"]:
        lines += [f"**Best:** trial {s['best']['trial']}, {s['metric']} = {s['best']['value']:.6g}", ""]
        lines += [f"- `{k}`: {v}" for k, v in s["best"]["params"].items()] + [""]
    o = s["objective"]
    if o["count"]:
        lines += ["## Statistical summary", "",
                  f"| {s['metric']} | count | mean | std | min | q25 | median | q75 | max |", "|---" * 9 + "|",
                  "| completed | " + " | ".join(f"{o[k]:.4g}" if isinstance(o[k], float) else str(o[k])
                                                for k in ("count", "mean", "std", "min", "q25", "median", "q75", "max")) + " |",
                  ""]
        if s["duration_s"].get("mean") is not None:
            lines += [f"Trial duration: mean {s['duration_s']['mean']:.1f} s, total {s['duration_s']['total']:.0f} s.", ""]
    lines += ["## Parameter importance", ""]
    if imp:
        lines += [f"- `{k}`: {v:.3f}" for k, v in imp.items()] + [""]
    for note in report.notes:
        lines += [f"_{note}_", ""]
    titles = {"param_importances": "Parameter importance", "optimization_history": "Optimization history",
              "parallel_coordinate": "Parallel coordinates", "intermediate_values": "Intermediate values (pruning)"}
    lines += ["## Figures", ""]
    for name in FIGURES:
        lines += [f"### {titles[name]}", "", f"![{titles[name]}]({name}.png)", "",
                  f"[interactive version]({name}.html)", ""]
    lines += [f"## Top {top_n} trials", "", _markdown_table(rows), "[CSV](top_trials.csv) · [summary.json](summary.json)", ""]
    if s["failures"]:
        lines += ["## Failed trials", ""] + [f"- trial {f['trial']}: {f['error']}" for f in s["failures"]] + [""]
    if "comparison.png" in report.files:
        lines += ["## Study comparison", "", "![Study comparison](comparison.png)", "",
                  "[interactive version](comparison.html) · [CSV](comparison.csv)", "",
                  _markdown_table(report.summary.get("comparison", [])), ""]
    return "\n".join(lines)


def compare_studies(studies: list[optuna.Study], report: StudyReport) -> StudyReport:
    """Best-so-far curves of several studies on one figure, and a table of their best results."""
    out = report.output_dir
    fig, pfig = comparison_figures(studies)
    rows = [comparison_row(study) for study in studies]
    report.files["comparison.png"] = save_png(fig, out / "comparison.png")
    report.files["comparison.html"] = save_html(pfig, out / "comparison.html")
    report.files["comparison.csv"] = _write_csv(rows, out / "comparison.csv")
    report.summary["comparison"] = jsonable(rows)
    atomic_write_json(out / "summary.json", report.summary)
    return report


def analyze(
    study_name: str,
    output_dir: str | Path | None = None,
    compare: list[str] | None = None,
    storage: str | None = None,
    top_n: int = 10,
    studies_dir: str | Path = LAYOUT.studies,
) -> StudyReport:
    """Analyse ``study_name`` (and compare it with ``compare``) into ``output_dir`` (default reports/{study})."""
    if top_n < 1:
        raise GemmaOcrError(f"--top-n must be at least 1, got {top_n}")
    study = load_study(study_name, storage, studies_dir)
    out = Path(output_dir) if output_dir else LAYOUT.reports / study_name
    others = [load_study(name, storage, studies_dir) for name in (compare or [])]
    differ = [o for o in others if objectives(o) != objectives(study)]
    if differ:
        raise GemmaOcrError(
            f"--compare: study {study_name} optimises {metric_label(study)}, but "
            + ", ".join(f"{o.study_name} {metric_label(o)}" for o in differ)
            + "; values of different objectives cannot share one axis: compare studies of the same objective")
    report = analyze_study(study, out, top_n)
    if others:
        studies = [first_objective_view(s) if len(s.directions) > 1 else s for s in (study, *others)]
        compare_studies(studies, report)
        rows = top_trials(studies[0], top_n)
        imp = {k: v["importance"] for k, v in report.summary["parameters"].items() if v.get("importance") is not None}
        imp = dict(sorted(imp.items(), key=lambda kv: -kv[1]))
        report.files["report.md"] = atomic_write_text(out / "report.md", _report_markdown(report, rows, imp, top_n))
    return report
