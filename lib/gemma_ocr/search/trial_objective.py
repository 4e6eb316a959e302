"""One trial, as Optuna's objective: its parameters, its results file, the backend's run, its outcome recorded.

A failed trial is recorded (its results file and the study's ``error`` attribute say why) and the study goes on;
a configuration error on the very first trial stops the search, since it would repeat in every trial.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from typing import Any

import optuna
from optuna.trial import Trial

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.backends import Backend, TrialContext, objective_metrics, objective_of
from gemma_ocr.search.export import check_trial_dirs, jsonable, now, trial_results_path, write_trial_results
from gemma_ocr.search.liveness import RESULTS_ATTR, retry_of
from gemma_ocr.search.pruning import TrialReporter
from gemma_ocr.search.space import suggest_all
from gemma_ocr.search.storage import STORAGE_ERRORS, first_line, retrying
from gemma_ocr.search.worker_state import WorkerState, worker_id

log = logging.getLogger("gemma_ocr.search.runner")  # a worker's lines keep the logger name they are known by


def describe_error(e: BaseException) -> str:
    """One line naming the failure; out-of-memory errors are labelled as such."""
    text = first_line(e) if str(e).strip() else ""
    kind = type(e).__name__
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower() or kind == "OutOfMemoryError":
        return f"out of memory ({kind}): {text}"
    return f"{kind}: {text}" if text else kind


def objective_values(backend: Backend, metrics: Any) -> list[float]:
    """The objective's values in a trial's metrics (one, or two in a two-objective study); each must be finite."""
    values = []
    for metric, _ in objective_metrics(backend):
        value = metrics.get(metric) if isinstance(metrics, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise GemmaOcrError(f"the objective {metric!r} is missing or not finite in the trial's metrics: {value!r}")
        values.append(float(value))
    return values


def record_attrs(trial: Trial, doc: dict[str, Any]) -> None:
    """The trial's metrics (without the per-step history, which stays in the results file) and error."""
    info = {"output_dir": doc["output_dir"], "worker": doc["worker"], "duration_s": doc["duration_s"]}
    if isinstance(doc["metrics"], dict):
        info.update({k: v for k, v in doc["metrics"].items() if k != "history"})
    try:
        trial.set_user_attr("metrics", info)
        if doc["error"]:
            trial.set_user_attr("error", doc["error"])
    except STORAGE_ERRORS as e:
        log.warning("trial %d: metrics not stored in the study (%s); they are in its results file", trial.number,
                    first_line(e))


def release_trial_memory() -> None:
    """Free what the trial held (the training's helper; without torch, nothing to free)."""
    if "torch" in sys.modules:
        # training.tune loads torch and transformers (start-up time): only once a trial has loaded torch itself
        from gemma_ocr.training.tune import release_memory

        release_memory()


class TrialObjective:
    """The objective ``study.optimize`` calls for each trial this worker runs."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.s = state.s
        self.backend = state.backend

    def _document(self, number: int) -> dict[str, Any]:
        """The trial's results document as it starts."""
        return {
            "study_name": self.s.study_name, "trial_number": number, "state": "RUNNING", "params": {},
            "metrics": {}, "value": None, "objective": objective_of(self.backend), "metric": self.backend.metric,
            "direction": self.backend.direction, "error": None,
            "search_mode": self.s.search_mode, "backend": self.backend.name,
            "output_dir": str(self.s.base_output_dir / f"trial_{number}"),
            "worker": worker_id(), "retry_of": None, "started": now(), "finished": None, "duration_s": None,
        }

    def _start(self, trial: Trial, doc: dict[str, Any]) -> TrialReporter:
        """Let go of the claim, take the trial's folder, sample its parameters, write its first results file."""
        state, number = self.state, trial.number
        results_path = trial_results_path(self.s.base_output_dir, number)
        state.local.claim.close()  # the trial exists: other workers may claim theirs
        trials = retrying(lambda: state.study.get_trials(deepcopy=False), f"trial {number}")
        doc["retry_of"] = retry_of(next(t for t in trials if t.number == number))
        check_trial_dirs(self.s.base_output_dir, self.s.study_name, [number])  # another study may have started since
        state.owned.add(number)
        doc["params"] = params = retrying(lambda: suggest_all(trial, self.s.search_space), f"trial {number}")
        for key, value in (("worker", doc["worker"]), (RESULTS_ATTR, str(results_path.resolve()))):
            retrying(lambda: trial.set_user_attr(key, value), f"trial {number}")
        (self.s.base_output_dir / f"trial_{number}").mkdir(parents=True, exist_ok=True)
        write_trial_results(results_path, doc)
        again = f" (retry of trial {doc['retry_of']})" if doc["retry_of"] is not None else ""
        log.info("trial %d%s: %s", number, again, json.dumps(jsonable(params), ensure_ascii=False))
        return TrialReporter(trial)

    def _failed(self, number: int, doc: dict[str, Any], e: Exception) -> None:
        """Record a failure; stop the search when it is a configuration error of its first trial."""
        state = self.state
        doc.update(state="FAIL", error=describe_error(e), traceback=traceback.format_exc(limit=20))
        log.error("trial %d failed: %s", number, doc["error"])
        if isinstance(e, GemmaOcrError) and not state.trials_run and not state.any_success():
            # a configuration error on the very first trial would repeat in every trial: stop here
            state.fatal = GemmaOcrError(f"trial {number} failed and the search stopped (the error would repeat "
                                        f"in every trial; it is recorded as FAIL): {e}")
            state.stop.set()

    def __call__(self, trial: Trial) -> float | list[float]:
        state = self.state
        number = state.local.number = trial.number
        doc = state.docs[number] = self._document(number)
        started = time.monotonic()
        reporter: TrialReporter | None = None
        try:  # everything that can fail is in here: Optuna's own log of a failed trial is turned down (see the worker)
            reporter = self._start(trial, doc)
            ctx = TrialContext(self.s.study_name, number, doc["params"], dict(self.s.fixed),
                               self.s.base_output_dir / f"trial_{number}", reporter, concurrent=self.s.n_jobs > 1)
            with state.opened.liveness.beating(trial):
                metrics = self.backend.run_trial(ctx)
            doc["metrics"] = metrics = jsonable(metrics)
            values = objective_values(self.backend, metrics)
            doc.update(state="COMPLETE", value=values[0])
            if len(values) > 1:
                doc["values"] = values
                return values
            return values[0]
        except optuna.TrialPruned as e:
            doc.update(state="PRUNED", pruned=str(e) or "pruned")
            doc["intermediate"] = [list(x) for x in reporter.history] if reporter else []
            raise
        except KeyboardInterrupt:
            doc.update(state="FAIL", error="interrupted (KeyboardInterrupt)")
            state.stop.set()
            raise
        except Exception as e:  # any failure of one trial is recorded (Optuna marks it FAIL), the study goes on
            self._failed(number, doc, e)
            raise
        finally:
            release_trial_memory()
            doc.update(finished=now(), duration_s=round(time.monotonic() - started, 3))
            record_attrs(trial, doc)
