"""What a trial trains: the backend registry (name -> objective builder).

A backend validates the fixed parameters and the search space before the first trial, trains one
trial from its parameters, and turns the best parameters into a configuration its trainer accepts.
Built in: ``gemma`` (LoRA SFT of Gemma 3 via :func:`gemma_ocr.training.tune`) and ``khmer-cnn``
(the Khmer-digits CRNN baseline). ``--backend package.module:attribute`` loads any other object
with the same methods (a class or a zero-argument factory), which is how a project plugs in its own.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT
from gemma_ocr.search.config import DEFAULT_SEARCH_SPACE
from gemma_ocr.search.pruning import TrialReporter, pruning_callback
from gemma_ocr.search.space import ParamSpec, probe_points
from gemma_ocr.settings import Layer, resolve
from gemma_ocr.training import config as config_module
from gemma_ocr.training.cer_eval import is_cer_metric

log = logging.getLogger(__name__)


@dataclass
class TrialContext:
    """Everything a backend needs to train one trial."""

    study_name: str
    trial_number: int
    params: dict[str, Any]
    fixed: dict[str, Any]
    output_dir: Path
    reporter: TrialReporter
    concurrent: bool = False  # other trials run in this process at the same time (--n-jobs > 1)

    @property
    def run_name(self) -> str:
        return f"{self.study_name}-trial-{self.trial_number}"


@runtime_checkable
class Backend(Protocol):
    """The objective of a search. ``metric`` is the value optimised in ``direction``.

    A backend may offer several objectives: ``objectives`` maps each name (``--objective``) to its
    ``(metric, direction)``; :func:`use_objective` picks one.
    """

    name: str
    metric: str
    direction: str

    def validate(self, fixed: dict[str, Any], space: dict[str, ParamSpec], source: str) -> None:
        """Raise GemmaOcrError for unknown or invalid parameters, before any trial runs."""

    def run_trial(self, ctx: TrialContext) -> dict[str, Any]:
        """Train one trial; return its metrics (including ``metric``). Raise optuna.TrialPruned when pruned."""

    def export_config(self, fixed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """The configuration file that trains the given parameters for real."""


class GemmaBackend:
    """LoRA SFT of a Gemma 3 model; the objective is the saved model's ``eval_loss`` (minimised), or with
    ``--objective cer``/``f1`` the CER/F1 of its greedy answers on the validation slice."""

    name = "gemma"
    metric = "eval_loss"
    direction = "minimize"
    objective = "eval_loss"
    objectives = {"eval_loss": ("eval_loss", "minimize"), "cer": ("eval_cer", "minimize"), "f1": ("eval_f1", "maximize"),
                  "normalized_cer": ("eval_normalized_cer", "minimize"),
                  "normalized_f1": ("eval_normalized_f1", "maximize"),
                  "train_seconds": ("train_seconds", "minimize")}  # with another: cer,train_seconds (a Pareto front)
    #: Set per trial by the search; a value for them in the config is replaced.
    per_trial_fields = ("output_dir", "run_name", "wandb_group")

    def __init__(self) -> None:
        self._config = config_module

    def _build(self, fixed: dict[str, Any], params: dict[str, Any], source: str, where: str) -> Any:
        """A checked TrainConfig: ``fixed`` (from ``source``) < ``params`` (named ``where`` in errors)."""
        return resolve(self._config.TrainConfig, Layer(source, fixed), Layer(where, params))

    def validate(self, fixed: dict[str, Any], space: dict[str, ParamSpec], source: str) -> None:
        for name in self.per_trial_fields:
            if name in space:
                raise GemmaOcrError(f"{source}: {name} is set per trial by the search and cannot be searched")
        where = f"{source}: search_space"
        by_cer = any(is_cer_metric(metric) for metric, _ in objective_metrics(self))
        for label, values in probe_points(space, where):  # every choice, not the first only
            config = self._build(fixed, values, source, label or where)
            if by_cer and not (config.cer_eval_samples and config.val_split):
                why = "cer_eval_samples is 0" if config.val_split else "val_split is empty"
                raise GemmaOcrError(f"--objective {self.objective} is measured by the CER evaluation of each trial, but "
                                    f"{why} in {label or source}: set cer_eval_samples > 0 and a val_split there")

    def run_trial(self, ctx: TrialContext) -> dict[str, Any]:
        values = dict(ctx.params, output_dir=str(ctx.output_dir), run_name=ctx.run_name, wandb_group=ctx.study_name)
        config = self._build(ctx.fixed, values, "fixed parameters", f"trial {ctx.trial_number}")  # W&B: grouped by study
        if ctx.concurrent:
            # transformers keeps process-wide state (TrainingArguments resets the shared AcceleratorState,
            # models load through the meta device): trials that train at once get a process each
            result = _tune_in_child(config, ctx.reporter, self.metric)
        else:
            # training.tune loads torch and transformers (start-up time of `gemma-ocr search`): only to train
            from gemma_ocr.training.tune import tune

            result = tune(config, callbacks=[pruning_callback(ctx.reporter, self.metric)])
        ctx.reporter.raise_if_pruned()
        return dict(result)

    def export_config(self, fixed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        fixed = {k: v for k, v in fixed.items() if k not in self.per_trial_fields}
        config = self._build(fixed, params, "fixed parameters", "best configuration").to_dict()
        for name in self.per_trial_fields:  # let sft_gemma.py choose these for the final run
            config.pop(name, None)
        return config


def use_objective(backend: Backend, objective: str | None) -> Backend:
    """``backend`` set to optimise ``objective`` (a name of its ``objectives``, or the metric it names); None keeps
    the backend's own. Two names joined by a comma (``cer,train_seconds``) make a two-objective study: its
    ``metrics``/``directions`` hold both, ``metric``/``direction`` the first. A name the backend does not offer is
    one line listing those it does."""
    if objective is None:
        return backend
    offered: dict[str, tuple[str, str]] = dict(getattr(backend, "objectives", None) or
                                               {backend.metric: (backend.metric, backend.direction)})
    names = []
    for given in (part.strip() for part in objective.split(",")):
        name = next((key for key, (metric, _) in offered.items() if given in (key, metric)), None)
        if name is None:
            raise GemmaOcrError(f"--objective {given!r}: the {backend.name} backend optimises "
                                f"{' or '.join(offered)}; choose one of them (or two, joined by a comma)")
        names.append(name)
    if len(names) > 2 or len(set(names)) < len(names):
        raise GemmaOcrError(f"--objective {objective!r}: give one objective, or two different ones joined by a comma "
                            "(e.g. cer,train_seconds)")
    backend.objective = ",".join(names)
    backend.metrics = tuple(offered[n][0] for n in names)
    backend.directions = tuple(offered[n][1] for n in names)
    backend.metric, backend.direction = backend.metrics[0], backend.directions[0]
    return backend


def objective_of(backend: Backend) -> str:
    """The ``--objective`` name a backend optimises (its metric when it offers one objective only)."""
    return str(getattr(backend, "objective", None) or backend.metric)


def objective_metrics(backend: Backend) -> list[tuple[str, str]]:
    """``(metric, direction)`` of each objective a backend optimises: one, or two in a two-objective study."""
    return list(zip(getattr(backend, "metrics", None) or (backend.metric,),
                    getattr(backend, "directions", None) or (backend.direction,)))


def study_metric(backend: Backend) -> str:
    """The objective as a study records it (its ``metric`` attribute): ``eval_cer``, or ``eval_cer,train_seconds``."""
    return ",".join(metric for metric, _ in objective_metrics(backend))


class KhmerCnnBackend:
    """The Khmer-digits CRNN baseline (trains on a CPU in minutes); maximises validation character accuracy.

    Parameters are the baseline's ``TrainingConfig`` fields or its trial aliases (``model``, ``epochs``,
    ``optimizer``, ``scheduler``, ``lr``, ``data``); each epoch's accuracy goes to the pruner.
    """

    name = "khmer-cnn"
    metric = "char_accuracy"
    direction = "maximize"
    objective = "char_accuracy"
    objectives = {"char_accuracy": ("char_accuracy", "maximize")}

    def __init__(self) -> None:
        try:
            self._backend = importlib.import_module("gemma_ocr.khmer_digits.backend")
        except ImportError as e:
            raise GemmaOcrError(f"--backend khmer-cnn needs gemma_ocr.khmer_digits.backend, which is missing ({e})") from None

    def validate(self, fixed: dict[str, Any], space: dict[str, ParamSpec], source: str) -> None:
        for label, values in probe_points(space, f"{source}: search_space"):  # every choice, not the first only
            try:
                self._backend.trial_config({**fixed, **values}, "trial")
            except GemmaOcrError as e:
                raise GemmaOcrError(f"{label or source}: {e}") from None

    def run_trial(self, ctx: TrialContext) -> dict[str, Any]:
        result = self._backend.train_trial(
            {**ctx.fixed, **ctx.params}, ctx.output_dir, report=lambda epoch, value: ctx.reporter.report(value, epoch)
        )
        ctx.reporter.raise_if_pruned()
        return {k: v for k, v in result.items() if k != "config"}

    def export_config(self, fixed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        config = self._backend.trial_config({**fixed, **params}, LAYOUT.khmer_best).to_dict()
        return config


def _tune_in_child(config: Any, reporter: TrialReporter, metric: str) -> dict[str, Any]:
    """``tune(config)`` in a child process; its evaluations reach ``reporter`` (and the pruner's answer the child)."""
    parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_child_main, args=(config.to_dict(), metric, child_end, os.getpid(), logging.getLogger().level),
        name=f"trial-{reporter.trial.number}", daemon=True)
    child.start()
    child_end.close()
    try:
        while True:
            try:
                kind, *payload = parent_end.recv()
            except EOFError:
                raise RuntimeError(f"the training process of trial {reporter.trial.number} died "
                                   f"(exit code {child.join(5) or child.exitcode})") from None
            if kind == "report":
                parent_end.send(reporter.report(*payload))
            elif kind == "done":
                return payload[0]
            else:  # "error": a user error stays one, anything else keeps its type name and message
                user, message = payload
                raise GemmaOcrError(message) if user else RuntimeError(message)
    finally:
        parent_end.close()
        child.join(30)
        if child.is_alive():
            child.kill()


def _child_main(config: dict[str, Any], metric: str, conn: Any, parent: int, level: int) -> None:
    """The child process of :func:`_tune_in_child`: trains, reports each evaluation, sends the result."""
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")

    def orphaned() -> None:  # the worker was killed (-9): a training nobody waits for stops too
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        # the child process loads torch and transformers to train (start-up time of `gemma-ocr search`)
        from transformers import TrainerCallback

        from gemma_ocr.training.config import TrainConfig  # built from trl's SFTConfig on first use: trl and torch
        from gemma_ocr.training.tune import tune  # torch and transformers, as above

        class ReportToParent(TrainerCallback):
            def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> Any:
                if metrics and metric in metrics:
                    conn.send(("report", metrics[metric], state.global_step))
                    if conn.recv():  # pruned
                        control.should_training_stop, control.should_save = True, False
                return control

        result = tune(TrainConfig.from_dict(config, source="trial"), callbacks=[ReportToParent()])
        conn.send(("done", result))
    except GemmaOcrError as e:
        conn.send(("error", True, str(e)))
    except Exception as e:  # noqa: BLE001 - sent to the parent, which records the trial as failed
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        conn.send(("error", False, f"{type(e).__name__}: {text}" if text else type(e).__name__))
    finally:
        conn.close()


#: The search space used when neither a config file nor a stored study gives one.
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "gemma": DEFAULT_SEARCH_SPACE,
    "khmer-cnn": {
        "learning_rate": {"type": "loguniform", "low": 3e-4, "high": 1e-2},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        "weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-3},
    },
}

BACKENDS: dict[str, Callable[[], Backend]] = {
    "gemma": GemmaBackend,
    "khmer-cnn": KhmerCnnBackend,
}


def get_backend(name: str) -> Backend:
    """Build the backend registered as ``name``, or load ``package.module:attribute``."""
    if name in BACKENDS:
        return BACKENDS[name]()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise GemmaOcrError(f"--backend {name}: cannot load it ({e}); check PYTHONPATH and the name") from None
        backend = obj() if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Backend)) else obj
        if not isinstance(backend, Backend):
            raise GemmaOcrError(f"--backend {name}: needs name, metric, direction, validate, run_trial, export_config")
        return backend
    raise GemmaOcrError(f"unknown --backend {name!r} (use {', '.join(BACKENDS)}, or package.module:attribute)")
