"""After Optuna told a trial: its results file, the best configuration exported, the progress bar, one log line.

The best parameters and configuration are written each time a trial of this worker becomes the study's best, and
once more when the worker stops (:class:`BestConfigExport`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.backends import objective_metrics, study_metric
from gemma_ocr.search.export import best_trial, export_best, objective_comment
from gemma_ocr.search.storage import STORAGE_ERRORS, first_line
from gemma_ocr.search.worker_state import WorkerState

log = logging.getLogger("gemma_ocr.search.runner")  # a worker's lines keep the logger name they are known by


class BestConfigExport:
    """Writes the study's best parameters and the configuration they make (``<studies-dir>/<study>_best_*.json``)."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state

    def __call__(self, trial: FrozenTrial | None = None) -> tuple[Path, Path] | None:
        """Write the best parameters and configuration; None when no trial completed or they cannot be written."""
        state, backend = self.state, self.state.backend
        try:
            best = trial or best_trial(state.study)
            if best is None:
                return None
            config = backend.export_config(dict(state.s.fixed), dict(best.params))
            config = {"_objective": objective_comment(state.study, best, objective_metrics(backend)), **config}
            return export_best(state.study, state.s.studies_dir, study_metric(backend), config, state.opened.meta, best)
        except (GemmaOcrError, OSError, *STORAGE_ERRORS) as e:
            log.warning("best configuration not written: %s", first_line(e))
            return None


class TrialProgress:
    """What follows each trial this worker finishes; the progress bar of its trials (``--progress``)."""

    def __init__(self, state: WorkerState, export: BestConfigExport,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        self.state = state
        self.export = export
        self.callbacks = tuple(callbacks)  # told of each trial this worker finishes, after its files are written
        self.bar: Any = None

    def open_bar(self, total: int | None) -> None:
        if self.state.s.progress and total:
            self.bar = tqdm(total=total, desc=f"{self.state.s.study_name} trials", unit="trial", file=sys.stderr)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """After Optuna told the trial: its results file, the best configuration, progress."""
        state = self.state
        doc = state.docs.pop(trial.number, None)
        if doc is None:
            return
        if trial.state != TrialState[doc["state"]]:
            doc["state_in_study"] = trial.state.name
        state.write(trial.number, doc)
        state.trials_run.append(trial.number)
        best = best_trial(study)
        if best is not None and best.number == trial.number:
            self.export(best)
        if self.bar is not None:
            self.bar.update(1)
            if best is not None:
                self.bar.set_postfix({f"best {state.backend.metric}": f"{best.values[0]:.4g}", "trial": best.number})
        shown = f"{doc['value']:.6g}" if doc["value"] is not None else "-"
        log.info("trial %d %s (%s %s)", trial.number, trial.state.name, state.backend.metric, shown)
        for callback in self.callbacks:
            callback(study, trial)
