"""The numbers of a study's analysis: its objectives, parameter importances, the top-N table, the statistical summary.

Loaded and computed here; drawn by :mod:`gemma_ocr.search.study_figures`, written by :mod:`gemma_ocr.search.analysis`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT
from gemma_ocr.search.export import jsonable, now
from gemma_ocr.search.liveness import retried
from gemma_ocr.search.storage import default_storage, journal_path, mask, open_storage, sqlite_path

FEW_TRIALS = 20  # fewer completed trials than this: parameter importances are a hint, not a finding


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


def objective_label(metric: str, direction: str) -> str:
    return f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)"


def metric_label(study: optuna.Study) -> str:
    """The objective with its direction, for axes: ``eval_cer (lower is better)`` (both, in a two-objective study)."""
    return ", ".join(objective_label(metric, direction) for metric, direction in objectives(study))


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


def importance_caveat(n_complete: int) -> str | None:
    """What an importance from ``n_complete`` trials is worth, when that is little."""
    if n_complete >= FEW_TRIALS:
        return None
    return (f"importances from {n_complete} completed trials are unreliable: fANOVA fits a forest to {n_complete} "
            f"points, so a high share can be chance; read them as a hint until the study has {FEW_TRIALS} or more")


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
    if not values:
        return {k: None for k in ("count", "mean", "std", "min", "q25", "median", "q75", "max")}
    a = np.array(values, dtype=float)
    return {"count": len(a), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "q25": float(np.percentile(a, 25)), "median": float(np.median(a)),
            "q75": float(np.percentile(a, 75)), "max": float(a.max())}


def summarize(study: optuna.Study, imp: dict[str, float], top_n: int) -> dict[str, Any]:
    """Counts per state, the objective's distribution, per-parameter ranges (all vs. top-N) and correlations."""
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


def best_so_far(study: optuna.Study) -> tuple[list[int], list[float]]:
    """The completed trials' numbers and the best value up to each."""
    better = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    best, xs, ys = None, [], []
    for t in study.trials:
        if t.state != TrialState.COMPLETE:
            continue
        best = t.value if best is None else better(best, t.value)
        xs.append(t.number)
        ys.append(best)
    return xs, ys


def comparison_row(study: optuna.Study) -> dict[str, Any]:
    """One study's line of the comparison table: its trials per state and its best trial."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    states = {s.name: sum(1 for t in study.trials if t.state == s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    bt = study.best_trial if complete else None
    return {"study": study.study_name, "metric": metric_name(study), "trials": len(study.trials),
            "complete": states["COMPLETE"], "pruned": states["PRUNED"], "failed": states["FAIL"],
            "best_value": bt.value if bt else None, "best_trial": bt.number if bt else None,
            "best_params": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in (bt.params.items() if bt else []))}
