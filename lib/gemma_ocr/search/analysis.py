"""Analysis of a finished (or running) study: importance, history, parallel coordinates, top trials.

Every figure is written twice: a PNG (matplotlib) and an interactive HTML page (plotly, sharing one
``plotly.min.js`` in the report folder, so it opens offline). ``report.md`` links them all with the
statistical summary and the top-N table; ``summary.json`` holds the same figures for programs.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.reports.plotting import save_png
from gemma_ocr.io import atomic_write_json, atomic_write_text
from gemma_ocr.search.export import jsonable, now
from gemma_ocr.search.liveness import retried
from gemma_ocr.layout import LAYOUT
from gemma_ocr.search.storage import default_storage, journal_path, mask, open_storage, sqlite_path

log = logging.getLogger(__name__)

FIGURES = ("param_importances", "optimization_history", "parallel_coordinate", "intermediate_values")
STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray"}
STATE_STYLES = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":", "RUNNING": "-."}
FEW_TRIALS = 20  # fewer completed trials than this: parameter importances are a hint, not a finding
LEGEND_TRIALS = 12  # learning curves with a legend entry each (more: each curve's end is labelled only)


@dataclass
class StudyReport:
    """Files written for one study (and the comparison, when asked)."""

    study_name: str
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- loading


def load_study(study_name: str, storage: str | None = None, studies_dir: str | Path = LAYOUT.studies) -> optuna.Study:
    """Open an existing study; one clear line when its database or the study is missing."""
    url = storage or default_storage(study_name, studies_dir)
    for path in (sqlite_path(url), journal_path(url)):
        if path is not None and not path.is_file():
            raise GemmaOcrError(
                f"no study database {path} (run core/hyperparameter_search.py --study-name {study_name} first, "
                "or pass --storage)"
            )
    opened = open_storage(url)
    names = optuna.get_all_study_names(opened)
    if study_name not in names:
        raise GemmaOcrError(f"study {study_name!r} not found in {mask(url)} (studies there: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=opened)


def metric_name(study: optuna.Study) -> str:
    return str(study.user_attrs.get("metric") or "objective")


def objectives(study: optuna.Study) -> list[tuple[str, str]]:
    """``(metric, direction)`` of each of the study's objectives (two in a two-objective study)."""
    directions = [d.name.lower() for d in study.directions]
    names = metric_name(study).split(",")
    return list(zip(names if len(names) == len(directions) else [metric_name(study)] * len(directions), directions))


def _label(metric: str, direction: str) -> str:
    return f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)"


def metric_label(study: optuna.Study) -> str:
    """The objective with its direction, for axes: ``eval_cer (lower is better)`` (both, in a two-objective study)."""
    return ", ".join(_label(metric, direction) for metric, direction in objectives(study))


def reference_level(study: optuna.Study) -> tuple[float, str] | None:
    """The value that says "learned nothing" for the study's objective, and its words: the loss of a uniform guess
    over the vocabulary (ln V, from the trials' metrics), or the CER / F1 of an empty answer."""
    metric = metric_name(study).removeprefix("eval_")
    if metric.endswith("cer"):
        return 1.0, "empty answer (CER 1)"
    if metric.endswith("f1"):
        return 0.0, "empty answer (F1 0)"
    if metric.endswith("loss"):
        for trial in study.get_trials(deepcopy=False):
            chance = (trial.user_attrs.get("metrics") or {}).get("chance_eval_loss")
            if isinstance(chance, (int, float)) and math.isfinite(chance):
                return float(chance), f"chance: a uniform guess over {round(math.exp(chance)):,} tokens (ln V = {chance:.2f})"
    return None


def _mark_reference(ax: Any, study: optuna.Study, values: list[float]) -> None:
    """Draw the reference level as a line when it is near the values, else name it above the plot's scale."""
    level = reference_level(study)
    if level is None or not values:
        return
    value, words = level
    low, high = min(values), max(values)
    if low - 0.5 * (high - low or abs(high) or 1) <= value <= high + 2 * (high - low or abs(high) or 1):
        ax.axhline(value, color="black", linestyle=":", linewidth=1, label=words)
    else:
        ax.text(0.01, 0.98, f"{words}: {value:.3g}, off this scale", transform=ax.transAxes, va="top", fontsize=8,
                color="dimgray")


def _plotly_reference(fig: Any, study: optuna.Study) -> Any:
    level = reference_level(study)
    if level is not None:
        fig.add_hline(y=level[0], line_dash="dot", annotation_text=level[1], annotation_position="top left")
    return fig


def importance_caveat(n_complete: int) -> str | None:
    """What an importance from ``n_complete`` trials is worth, when that is little."""
    if n_complete >= FEW_TRIALS:
        return None
    return (f"importances from {n_complete} completed trials are unreliable: fANOVA fits a forest to {n_complete} "
            f"points, so a high share can be chance; read them as a hint until the study has {FEW_TRIALS} or more")


# ---------------------------------------------------------------------------- figures


def _save_html(fig: Any, path: Path) -> Path:
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def _placeholder(title: str, message: str) -> tuple[Any, Any]:
    """A PNG and an HTML figure that say why a plot could not be drawn."""
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    pfig = go.Figure()
    pfig.update_layout(title=title, annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")])
    return fig, pfig


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Parameter importances (fANOVA), or an empty dict and the reason they cannot be computed yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"parameter importance needs at least 2 completed trials ({len(complete)} so far)"
    try:
        with warnings.catch_warnings():  # experimental/numeric notes; announced deprecations stay visible
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            values = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {}, f"parameter importance not available: {e}"
    if not values:
        return {}, "parameter importance not available: no parameter varied across completed trials"
    return {k: float(v) for k, v in values.items()}, None


def _importance_figures(imp: dict[str, float], why: str | None, n_complete: int) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    if not imp:
        return _placeholder("Parameter importance", why or "not available")
    names = list(imp)[::-1]
    title = f"Parameter importance ({n_complete} completed trials"
    title += ": unreliable, a hint only)" if importance_caveat(n_complete) else ")"
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [imp[n] for n in names], color="tab:gray" if importance_caveat(n_complete) else "tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(title)
    pfig = go.Figure(go.Bar(x=[imp[n] for n in names], y=names, orientation="h"))
    pfig.update_layout(title=title, xaxis_title="importance (fANOVA)")
    return fig, pfig


def _history_png(study: optuna.Study, metric: str) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.value is not None]
    if complete:
        ax.scatter([t.number for t in complete], [t.value for t in complete], label="complete", color="tab:blue")
        best, xs, ys = None, [], []
        better = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        for t in complete:
            best = t.value if best is None else better(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], marker="x", color="tab:orange",
                   label="pruned (last reported)")
    failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
    if failed:
        for n in failed:
            ax.axvline(n, color="tab:red", alpha=0.2)
        ax.plot([], [], color="tab:red", alpha=0.3, label=f"failed ({len(failed)})")
    _mark_reference(ax, study, [t.value for t in complete + pruned])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    ax.set_xlabel("trial")
    ax.set_ylabel(metric_label(study))
    ax.set_title(f"Optimization history of {study.study_name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig


def _parallel_png(study: optuna.Study, metric: str) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    names = sorted({n for t in complete for n in t.params})
    if not complete or not names:
        return _placeholder("Parallel coordinates", "no completed trials yet")[0]
    columns: list[list[float]] = []
    ticks: list[tuple[list[float], list[str]]] = []
    for name in names:
        dist = next(t.distributions[name] for t in complete if name in t.distributions)
        raw = [t.params.get(name) for t in complete]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            choices = list(dist.choices)
            idx = [choices.index(v) if v in choices else np.nan for v in raw]
            span = max(len(choices) - 1, 1)
            columns.append([i / span for i in idx])
            ticks.append(([i / span for i in range(len(choices))], [str(c) for c in choices]))
        else:
            log_scale = getattr(dist, "log", False)
            vals = np.array([math.log10(v) if log_scale else v for v in raw], dtype=float)
            lo, hi = np.nanmin(vals), np.nanmax(vals)
            span = (hi - lo) or 1.0
            columns.append(list((vals - lo) / span))
            fmt = (lambda x: f"{10 ** x:.3g}") if log_scale else (lambda x: f"{x:.3g}")
            ticks.append(([0.0, 1.0], [fmt(lo), fmt(hi)]))
    values = np.array([t.value for t in complete])
    norm = plt.Normalize(values.min(), values.max() if values.max() > values.min() else values.min() + 1)
    cmap = plt.get_cmap("viridis_r" if study.direction == optuna.study.StudyDirection.MINIMIZE else "viridis")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4.5))
    xs = list(range(len(names)))
    for row, value in enumerate(values):
        ax.plot(xs, [col[row] for col in columns], color=cmap(norm(value)), alpha=0.8)
    for x, (pos, labels) in zip(xs, ticks):
        ax.axvline(x, color="black", linewidth=0.8)
        for p, label in zip(pos, labels):
            ax.text(x + 0.03, p, label, fontsize=7, va="center")
    ax.set_xticks(xs, names, rotation=20)
    ax.set_yticks([])
    ax.set_title(f"Parallel coordinates (colour: {metric})")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric_label(study))
    return fig


def _intermediate_png(study: optuna.Study, metric: str) -> Any:
    """Each trial's reported values against the step: a colour and a label per trial, the line style its state."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = [t for t in study.trials if t.intermediate_values]
    if not trials:
        return _placeholder("Intermediate values", "no trial reported intermediate values")[0]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = plt.get_cmap("tab10" if len(trials) <= 10 else "tab20")
    values = []
    for i, t in enumerate(trials):
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[s] for s in steps]
        values += ys
        color = colors(i % colors.N)
        ax.plot(steps, ys, color=color, linestyle=STATE_STYLES.get(t.state.name, "-"), alpha=0.85,
                marker="." if len(steps) < 30 else None,
                label=f"trial {t.number} ({t.state.name.lower()})" if len(trials) <= LEGEND_TRIALS else None)
        ax.annotate(str(t.number), (steps[-1], ys[-1]), textcoords="offset points", xytext=(3, 0), fontsize=7,
                    color=color, va="center")
    _mark_reference(ax, study, values)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (a gemma trial's training step)")
    ax.set_ylabel(f"{metric_label(study)}, reported")
    shown = "" if len(trials) <= LEGEND_TRIALS else "; each curve ends in its trial number"
    ax.set_title(f"Learning curves reported to the pruner ({len(trials)} trials; dashed: pruned{shown})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _plotly_or_placeholder(build: Any, study: optuna.Study, title: str) -> Any:
    try:
        with warnings.catch_warnings():  # experimental/numeric notes; announced deprecations stay visible
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            return build(study)
    except (ValueError, RuntimeError, KeyError, ZeroDivisionError) as e:
        return _placeholder(title, f"not available: {e}")[1]


# ---------------------------------------------------------------------------- tables and summary


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def top_trials(study: optuna.Study, n: int) -> list[dict[str, Any]]:
    """The ``n`` best completed trials: number, value, params, duration."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows = []
    for rank, t in enumerate(sorted(complete, key=lambda t: t.value, reverse=reverse)[:n], 1):
        rows.append({"rank": rank, "trial": t.number, "value": t.value, **t.params, "duration_s": _duration(t)})
    return rows


def _stats(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {k: None for k in ("count", "mean", "std", "min", "q25", "median", "q75", "max")}
    a = np.array(values, dtype=float)
    return {"count": len(a), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "q25": float(np.percentile(a, 25)), "median": float(np.median(a)),
            "q75": float(np.percentile(a, 75)), "max": float(a.max())}


def summarize(study: optuna.Study, imp: dict[str, float], top_n: int) -> dict[str, Any]:
    """Counts per state, the objective's distribution, per-parameter ranges (all vs. top-N) and correlations."""
    import numpy as np

    trials = study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    top = top_trials(study, top_n)
    params: dict[str, Any] = {}
    for name in sorted({n for t in complete for n in t.params}):
        vals = [t.params[name] for t in complete if name in t.params]
        entry: dict[str, Any] = {"importance": imp.get(name)}
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            entry["all"] = _stats([float(v) for v in vals])
            entry["top"] = _stats([float(r[name]) for r in top if name in r])
            ys = [t.value for t in complete if name in t.params]
            if len(set(vals)) > 1 and len(vals) > 2:
                rx, ry = np.argsort(np.argsort(vals)), np.argsort(np.argsort(ys))
                entry["spearman_with_objective"] = float(np.corrcoef(rx, ry)[0, 1])
        else:
            counts: dict[str, int] = {}
            for v in vals:
                counts[str(v)] = counts.get(str(v), 0) + 1
            entry["counts"] = counts
            entry["top_counts"] = {str(r[name]): sum(1 for x in top if x.get(name) == r[name]) for r in top if name in r}
        params[name] = entry
    durations = [d for d in (_duration(t) for t in trials) if d is not None]
    again = retried(trials)
    by_state = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    level = reference_level(study)
    return jsonable({
        "study_name": study.study_name,
        "metric": metric_name(study),
        "direction": study.direction.name.lower(),
        "n_trials": len(trials),
        "states": by_state,
        "best": {"trial": best.number, "value": best.value, "params": best.params} if best else None,
        "objective": _stats([t.value for t in complete]),
        "reference": dict(zip(("value", "meaning"), level)) if level else None,
        "duration_s": {"total": sum(durations), **{k: v for k, v in _stats(durations).items() if k in ("mean", "median", "max")}},
        "parameters": params,
        "failures": [{"trial": t.number, "error": _failure(t, again)} for t in trials if t.state == TrialState.FAIL],
        "generated": now(),
    })


def _failure(trial: FrozenTrial, again: dict[int, int]) -> str | None:
    """Why a trial failed: its recorded error, or that its worker died and which trial ran it again."""
    if trial.user_attrs.get("error"):
        return trial.user_attrs["error"]
    if trial.number in again:
        return f"its worker stopped (no heartbeat); run again as trial {again[trial.number]}"
    return None


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
    import csv
    import io

    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r)) or ["rank", "trial", "value"]
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------- the report


def analyze_study(study: optuna.Study, output_dir: str | Path, top_n: int = 10) -> StudyReport:
    """Write every figure (PNG + HTML), the top-N table (CSV/Markdown), summary.json and report.md.

    A two-objective study gets its Pareto front (figure, table, summary) and the other figures of its first
    objective."""
    if len(study.directions) > 1:
        return _analyze_two_objectives(study, output_dir, top_n)
    import matplotlib

    matplotlib.use("Agg")
    from optuna import visualization as vis

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
        fig = _plotly_reference(vis.plot_optimization_history(s, target_name=metric), s)
        return fig.update_xaxes(tickformat="d", title="trial").update_yaxes(title=label)

    def curves_html(s: optuna.Study) -> Any:
        fig = _plotly_reference(vis.plot_intermediate_values(s), s)
        return fig.update_xaxes(tickformat="d", title="step").update_yaxes(title=f"{label}, reported")

    png_imp, html_imp = _importance_figures(imp, why, n_complete)
    figures = {
        "param_importances": (png_imp, html_imp),
        "optimization_history": (_history_png(study, metric),
                                 _plotly_or_placeholder(history_html, study, "Optimization history")),
        "parallel_coordinate": (_parallel_png(study, metric),
                                _plotly_or_placeholder(lambda s: vis.plot_parallel_coordinate(s, target_name=label), study, "Parallel coordinates")),
        "intermediate_values": (_intermediate_png(study, metric),
                                _plotly_or_placeholder(curves_html, study, "Intermediate values")),
    }
    for name, (png, html) in figures.items():
        report.files[f"{name}.png"] = save_png(png, out / f"{name}.png")
        report.files[f"{name}.html"] = _save_html(html, out / f"{name}.html")

    rows = top_trials(study, top_n)
    report.files["top_trials.csv"] = _write_csv(rows, out / "top_trials.csv")
    report.summary = summarize(study, imp, top_n)
    report.files["summary.json"] = atomic_write_json(out / "summary.json", report.summary)
    report.files["report.md"] = atomic_write_text(out / "report.md", _report_markdown(report, rows, imp, top_n))
    return report


def first_objective_view(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of a two-objective study that holds only its first objective's values (same trial
    numbers, parameters and attributes), for the figures drawn one objective at a time."""
    (metric, direction), *_ = objectives(study)
    view = optuna.create_study(study_name=study.study_name, direction=direction)
    view.set_user_attr("metric", metric)
    for trial in study.get_trials(deepcopy=True):
        if trial.values is not None:
            trial.values = trial.values[:1]
        view.add_trial(trial)
    return view


def _pareto_png(study: optuna.Study, front: list[dict[str, Any]]) -> Any:
    """Every completed trial in the plane of the two objectives; the front joined, each point of it numbered."""
    import matplotlib.pyplot as plt

    (m1, d1), (m2, d2) = objectives(study)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    on_front = {p["trial"] for p in front}
    fig, ax = plt.subplots(figsize=(8, 5))
    rest = [t for t in complete if t.number not in on_front]
    if rest:
        ax.scatter([t.values[0] for t in rest], [t.values[1] for t in rest], color="tab:gray", alpha=0.6,
                   label=f"dominated ({len(rest)})")
        for t in rest:
            ax.annotate(str(t.number), (t.values[0], t.values[1]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color="dimgray")
    xs, ys = [p["values"][m1] for p in front], [p["values"][m2] for p in front]
    ax.plot(xs, ys, color="tab:red", marker="o", label=f"Pareto front ({len(front)})")
    for p, x, y in zip(front, xs, ys):
        ax.annotate(f"{p['trial']}" + (" (exported)" if p["exported"] else ""), (x, y), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel(_label(m1, d1))
    ax.set_ylabel(_label(m2, d2))
    ax.set_title(f"Pareto front of {study.study_name} ({len(complete)} completed trials; numbers: trials)")
    ax.legend()
    return fig


def _analyze_two_objectives(study: optuna.Study, output_dir: str | Path, top_n: int) -> StudyReport:
    from optuna import visualization as vis

    from gemma_ocr.search.export import pareto_front

    pairs = objectives(study)
    report = analyze_study(first_objective_view(study), output_dir, top_n)
    out = report.output_dir
    front = pareto_front(study, pairs)
    html = _plotly_or_placeholder(lambda s: vis.plot_pareto_front(s, target_names=[_label(*p) for p in pairs]), study,
                                  "Pareto front")
    report.files["pareto_front.png"] = save_png(_pareto_png(study, front), out / "pareto_front.png")
    report.files["pareto_front.html"] = _save_html(html, out / "pareto_front.html")
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
                  f"Two objectives: {_label(m1, d1)} and {_label(m2, d2)}. On the front, no trial is better in one "
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
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    out = report.output_dir
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pfig = go.Figure()
    rows = []
    for study in studies:
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        better = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        best, xs, ys = None, [], []
        for t in complete:
            best = t.value if best is None else better(best, t.value)
            xs.append(t.number)
            ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", label=study.study_name)
            pfig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=study.study_name, line_shape="hv"))
        states = {s.name: sum(1 for t in study.trials if t.state == s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        bt = study.best_trial if complete else None
        rows.append({"study": study.study_name, "metric": metric_name(study), "trials": len(study.trials),
                     "complete": states["COMPLETE"], "pruned": states["PRUNED"], "failed": states["FAIL"],
                     "best_value": bt.value if bt else None, "best_trial": bt.number if bt else None,
                     "best_params": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in (bt.params.items() if bt else []))})
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {metric_label(studies[0])} so far")
    ax.set_title("Study comparison")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    pfig.update_layout(title="Study comparison (best value so far)", xaxis_title="trial",
                       yaxis_title=f"best {metric_label(studies[0])}")
    pfig.update_xaxes(tickformat="d")
    report.files["comparison.png"] = save_png(fig, out / "comparison.png")
    report.files["comparison.html"] = _save_html(pfig, out / "comparison.html")
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
