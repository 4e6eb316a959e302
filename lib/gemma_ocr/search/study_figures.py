"""The figures of a study's analysis, each twice: a PNG (matplotlib) and an interactive HTML page (plotly).

The HTML pages share one ``plotly.min.js`` in the report folder, so they open offline. matplotlib and plotly load
with this module: :mod:`gemma_ocr.commands.analyze` imports the analysis only once a report is asked for.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import plotly.graph_objects as go
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from gemma_ocr.search.study_summary import (best_so_far, importance_caveat, metric_label, objective_label, objectives,
                                            reference_level)

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray"}
STATE_STYLES = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":", "RUNNING": "-."}
LEGEND_TRIALS = 12  # learning curves with a legend entry each (more: each curve's end is labelled only)


def mark_reference(ax: Any, study: optuna.Study, values: list[float]) -> None:
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


def plotly_reference(fig: Any, study: optuna.Study) -> Any:
    level = reference_level(study)
    if level is not None:
        fig.add_hline(y=level[0], line_dash="dot", annotation_text=level[1], annotation_position="top left")
    return fig


def save_html(fig: Any, path: Path) -> Path:
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def placeholder(title: str, message: str) -> tuple[Any, Any]:
    """A PNG and an HTML figure that say why a plot could not be drawn."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    pfig = go.Figure()
    pfig.update_layout(title=title, annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")])
    return fig, pfig


def importance_figures(imp: dict[str, float], why: str | None, n_complete: int) -> tuple[Any, Any]:
    if not imp:
        return placeholder("Parameter importance", why or "not available")
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


def history_png(study: optuna.Study, metric: str) -> Any:
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
    mark_reference(ax, study, [t.value for t in complete + pruned])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    ax.set_xlabel("trial")
    ax.set_ylabel(metric_label(study))
    ax.set_title(f"Optimization history of {study.study_name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig


def parallel_png(study: optuna.Study, metric: str) -> Any:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    names = sorted({n for t in complete for n in t.params})
    if not complete or not names:
        return placeholder("Parallel coordinates", "no completed trials yet")[0]
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


def intermediate_png(study: optuna.Study, metric: str) -> Any:
    """Each trial's reported values against the step: a colour and a label per trial, the line style its state."""
    trials = [t for t in study.trials if t.intermediate_values]
    if not trials:
        return placeholder("Intermediate values", "no trial reported intermediate values")[0]
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
    mark_reference(ax, study, values)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (a gemma trial's training step)")
    ax.set_ylabel(f"{metric_label(study)}, reported")
    shown = "" if len(trials) <= LEGEND_TRIALS else "; each curve ends in its trial number"
    ax.set_title(f"Learning curves reported to the pruner ({len(trials)} trials; dashed: pruned{shown})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plotly_or_placeholder(build: Any, study: optuna.Study, title: str) -> Any:
    try:
        with warnings.catch_warnings():  # experimental/numeric notes; announced deprecations stay visible
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            return build(study)
    except (ValueError, RuntimeError, KeyError, ZeroDivisionError) as e:
        return placeholder(title, f"not available: {e}")[1]


def pareto_png(study: optuna.Study, front: list[dict[str, Any]]) -> Any:
    """Every completed trial in the plane of the two objectives; the front joined, each point of it numbered."""
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
    ax.set_xlabel(objective_label(m1, d1))
    ax.set_ylabel(objective_label(m2, d2))
    ax.set_title(f"Pareto front of {study.study_name} ({len(complete)} completed trials; numbers: trials)")
    ax.legend()
    return fig


def comparison_figures(studies: list[optuna.Study]) -> tuple[Any, Any]:
    """Best-so-far curves of several studies: a PNG and an HTML figure."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pfig = go.Figure()
    for study in studies:
        xs, ys = best_so_far(study)
        if xs:
            ax.step(xs, ys, where="post", label=study.study_name)
            pfig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=study.study_name, line_shape="hv"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {metric_label(studies[0])} so far")
    ax.set_title("Study comparison")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    pfig.update_layout(title="Study comparison (best value so far)", xaxis_title="trial",
                       yaxis_title=f"best {metric_label(studies[0])}")
    pfig.update_xaxes(tickformat="d")
    return fig, pfig
