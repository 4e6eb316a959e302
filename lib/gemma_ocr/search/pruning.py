"""Pruning: intermediate evaluations go to the trial, and an unpromising trial stops early.

:class:`TrialReporter` is what an objective sees (independent of Optuna's API details);
:func:`pruning_callback` turns it into a ``transformers.TrainerCallback`` that reports every
evaluation's ``eval_loss`` at its global step and stops training when the pruner says so.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner

from gemma_ocr.search.config import SearchArguments
from gemma_ocr.search.storage import retrying

log = logging.getLogger(__name__)


def make_pruner(settings: SearchArguments) -> BasePruner:
    """MedianPruner with the settings' startup trials / warm-up steps, or no pruning."""
    if settings.pruner == "none":
        return NopPruner()
    return MedianPruner(n_startup_trials=settings.pruner_n_startup_trials, n_warmup_steps=settings.pruner_n_warmup_steps,
                        interval_steps=settings.pruner_interval_steps)


class TrialReporter:
    """Reports a trial's intermediate objective values and remembers whether it was pruned."""

    def __init__(self, trial: optuna.trial.BaseTrial) -> None:
        self.trial = trial
        self.pruned = False
        self.pruned_at: int | None = None
        self.history: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> bool:
        """Record ``value`` at ``step``; return True when the trial should stop (pruned)."""
        value = float(value)
        self.history.append((int(step), value))
        if math.isfinite(value):
            try:
                retrying(lambda: self.trial.report(value, int(step)), f"trial {self.trial.number}: reporting step {step}")
            except NotImplementedError:  # multi-objective studies do not prune
                return False
        if retrying(self.trial.should_prune, f"trial {self.trial.number}: asking the pruner"):
            self.pruned, self.pruned_at = True, int(step)
            log.info("trial %d pruned at step %d (value %.4g)", self.trial.number, step, value)
        return self.pruned

    def check(self, value: float, step: int) -> None:
        """Like :meth:`report` but raises ``optuna.TrialPruned`` to stop a plain-Python objective."""
        if self.report(value, step):
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")

    def raise_if_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` when an earlier report pruned the trial."""
        if self.pruned:
            last = self.history[-1][1] if self.history else float("nan")
            raise optuna.TrialPruned(f"pruned at step {self.pruned_at} (value {last:.4g})")


def pruning_callback(reporter: TrialReporter, metric: str = "eval_loss") -> Any:
    """A ``transformers.TrainerCallback`` feeding each evaluation's ``metric`` to ``reporter``."""
    # transformers is loaded by the training that asks for this callback, not by the search (start-up time)
    from transformers import TrainerCallback

    class OptunaPruningCallback(TrainerCallback):
        """Report ``metric`` after each evaluation; stop training when the trial is pruned."""

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> Any:
            if not metrics or metric not in metrics:
                log.warning("evaluation without %s; nothing reported to the pruner", metric)
                return control
            if reporter.report(metrics[metric], state.global_step):
                control.should_training_stop = True
                control.should_save = False
            return control

    return OptunaPruningCallback()
