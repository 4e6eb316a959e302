"""Claiming trials: this worker's budget (``n_trials``, ``timeout``), the study-wide cap and the grid's points.

A worker claims its trial under the study lock (:meth:`gemma_ocr.search.study_setup.SearchStudy.lock`), held from
the count until the trial exists, so racing workers never overrun ``max_total_trials`` and a grid point is run once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gemma_ocr.search.config import SearchSettings
from gemma_ocr.search.liveness import Liveness, counted, running_trials
from gemma_ocr.search.space import build_grid, grid_points, grid_size
from gemma_ocr.search.storage import retrying
from gemma_ocr.search.worker_state import worker_id

log = logging.getLogger("gemma_ocr.search.runner")  # a worker's lines keep the logger name they are known by


def same_value(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same point (floats up to rounding; booleans and None by identity)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def matches(point: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether ``params`` hold the grid ``point``."""
    return all(k in params and same_value(v, params[k]) for k, v in point.items())


class TrialClaims:
    """What this worker may still start: its own budget and the study's free grid points."""

    def __init__(self, settings: SearchSettings) -> None:
        self.s = settings
        self.grid = build_grid(settings.search_space, settings.space_source) if settings.search_mode == "grid" else None
        self.points = grid_points(self.grid) if self.grid else []
        self.tried: list[dict[str, Any]] = []  # grid points this worker claimed (a failing one is not rerun here)
        self.deadline = time.monotonic() + settings.timeout if settings.timeout else None
        self.left = settings.n_trials
        self.budget_lock = threading.Lock()

    def free_points(self, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
        """Grid points neither done (complete/pruned), running, queued, nor already tried by this worker."""
        live = [{**t.system_attrs.get("fixed_params", {}), **t.params} for t in trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)]
        return [p for p in self.points if not any(matches(p, params) for params in live + self.tried)]

    def total(self, study: optuna.Study) -> int | None:
        """How many trials this worker may run at most (a grid: no more than its points still to run)."""
        total = self.s.n_trials
        if self.grid is not None:
            trials = retrying(lambda: study.get_trials(deepcopy=False), "reading the study")
            queued = sum(1 for t in trials if t.state == TrialState.WAITING)
            remaining = len(self.free_points(trials)) + queued
            log.info("grid of %d points, %d still to run", grid_size(self.grid), remaining)
            if remaining == 0 and not running_trials(trials):
                log.info("every grid point of %s has been run already", self.s.study_name)
            total = remaining if total is None else min(total, remaining)
        return total

    def take(self, stopped: bool) -> bool:
        """Take one trial of this worker's budget; False when it is spent, the timeout passed or the worker stops."""
        if stopped or (self.deadline is not None and time.monotonic() >= self.deadline):
            return False
        with self.budget_lock:
            if self.left is not None and self.left <= 0:
                return False
            if self.left is not None:
                self.left -= 1
        return True

    def give_back(self) -> None:
        """Return a taken trial to the budget (no trial was started with it)."""
        with self.budget_lock:
            if self.left is not None:
                self.left += 1

    def slot(self, study: optuna.Study, liveness: Liveness) -> str:
        """Under the study lock: "run" when this worker may start a trial now; "wait" when the study-wide
        budget is taken but trials of other workers still run (should one die, its retry comes here);
        "done" otherwise."""
        liveness.before_claim(study)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return "run"  # a queued trial goes first: a dead worker's retry, or a grid point not yet started
        full = self.s.max_total_trials is not None and counted(trials) >= self.s.max_total_trials
        if not full and self.grid is not None:
            free = self.free_points(trials)
            if free:
                self.tried.append(free[0])
                study.enqueue_trial(free[0], user_attrs={"grid_point": True})
            full = not free
        if not full:
            return "run"
        me = worker_id()
        return "wait" if any(t.user_attrs.get("worker") != me for t in running_trials(trials)) else "done"
