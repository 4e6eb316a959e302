"""What a search writes: per-trial results, the best parameters with metadata, the best config.

* ``models/hyperparam_search/trial_{n}/trial_{n}_results.json``: params, metrics, state, error (a base
  folder's trial folders belong to one study, the one named in these files);
* ``optuna_studies/{study}_best_params.json``: best value and params, trial counts, search mode;
* ``optuna_studies/{study}_best_config.json``: fixed + best parameters, a config the trainer accepts.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json

TRIAL_DIR = re.compile(r"trial_(\d+)")


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """``value`` with non-JSON leaves (paths, numpy scalars, NaN) turned into JSON-safe ones."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state (complete, pruned, failed, running, waiting) and in total."""
    trials = study.get_trials(deepcopy=False)
    counts = {"total": len(trials)}
    for name, state in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL),
                        ("running", TrialState.RUNNING), ("waiting", TrialState.WAITING)):
        counts[name] = sum(1 for t in trials if t.state == state)
    return counts


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None when no trial has completed. In a two-objective study: the trial of the
    Pareto front best by the first objective (the one whose configuration is exported)."""
    if len(study.directions) > 1:
        front = study.best_trials
        if not front:
            return None
        sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
        return min(front, key=lambda t: (sign * t.values[0], t.number))
    try:
        return study.best_trial
    except ValueError:
        return None


def pareto_front(study: optuna.Study, objectives: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A two-objective study's Pareto front (no trial is better in one objective without being worse in the
    other), by the first objective: ``{"trial", "values": {metric: value}, "params"}`` each; empty for one objective."""
    if len(study.directions) < 2:
        return []
    best = best_trial(study)
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    front = sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))
    return jsonable([{"trial": t.number, "values": dict(zip((m for m, _ in objectives), t.values)), "params": t.params,
                      "exported": best is not None and t.number == best.number} for t in front])


def objective_comment(study: optuna.Study, trial: FrozenTrial, objectives: list[tuple[str, str]]) -> str:
    """The best-config file's ``_objective`` line: what was optimised and what this configuration reached."""
    reached = ", ".join(f"{metric} ({direction}) {value:.6g}" for (metric, direction), value in zip(objectives, trial.values))
    if len(objectives) == 1:
        return f"{reached.replace(') ', '): ', 1)} in trial {trial.number} of study {study.study_name}"
    return (f"{reached} in trial {trial.number} of study {study.study_name}: of its Pareto front of "
            f"{len(study.best_trials)} trials, the best by {objectives[0][0]} (the others: _best_params.json)")


def trial_results_path(base_output_dir: Path, number: int) -> Path:
    return Path(base_output_dir) / f"trial_{number}" / f"trial_{number}_results.json"


def recorded_study(results_path: Path) -> str | None:
    """The study name recorded in a trial results file; None when there is no readable one."""
    try:
        value = json.loads(Path(results_path).read_text(encoding="utf-8")).get("study_name")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def check_trial_dirs(base_output_dir: Path, study_name: str, numbers: Iterable[int] | None = None) -> None:
    """Refuse trial folders (all of ``base_output_dir``, or those of ``numbers``) that another study wrote."""
    base = Path(base_output_dir)
    if numbers is None:
        dirs = base.iterdir() if base.is_dir() else []
        numbers = sorted(int(m.group(1)) for d in dirs if d.is_dir() and (m := TRIAL_DIR.fullmatch(d.name)))
    for number in numbers:
        other = recorded_study(trial_results_path(base, number))
        if other is not None and other != study_name:
            raise GemmaOcrError(
                f"{base} holds trial folders of study {other!r} ({base / f'trial_{number}'}), which study "
                f"{study_name!r} would overwrite; pass --base-output-dir {base / study_name} (or another folder), "
                f"or --study-name {other} --resume to continue that study"
            )


def write_trial_results(path: Path, document: dict[str, Any]) -> Path:
    """Write one trial's results file atomically."""
    return atomic_write_json(path, jsonable(document))


def best_params_document(study: optuna.Study, trial: FrozenTrial, metric: str, meta: dict[str, Any]) -> dict[str, Any]:
    """``{study}_best_params.json``: the best parameters with the study's metadata."""
    counts = trial_counts(study)
    directions = [d.name.lower() for d in study.directions]
    return jsonable({
        "study_name": study.study_name,
        "best_value": trial.values[0],
        "metric": metric,
        "direction": ",".join(directions),
        **({"best_values": trial.values,
            "pareto_front": pareto_front(study, list(zip(metric.split(","), directions)))} if len(directions) > 1 else {}),
        "best_trial_number": trial.number,
        "best_params": trial.params,
        "best_metrics": trial.user_attrs.get("metrics", {}),
        "n_trials": counts["total"],
        "n_complete": counts["complete"],
        "n_pruned": counts["pruned"],
        "n_failed": counts["failed"],
        "n_running": counts["running"],
        **meta,
        "timestamp": now(),
    })


def export_best(
    study: optuna.Study,
    export_dir: Path,
    metric: str,
    config: dict[str, Any] | None,
    meta: dict[str, Any],
    trial: FrozenTrial | None = None,
) -> tuple[Path, Path] | None:
    """Write ``{study}_best_params.json`` and ``{study}_best_config.json``; None without a complete trial."""
    trial = trial or best_trial(study)
    if trial is None:
        return None
    export_dir = Path(export_dir)
    params_path = atomic_write_json(
        export_dir / f"{study.study_name}_best_params.json", best_params_document(study, trial, metric, meta)
    )
    config_path = export_dir / f"{study.study_name}_best_config.json"
    atomic_write_json(config_path, jsonable(config if config is not None else trial.params))
    return params_path, config_path
