"""Experiment tracking: Weights & Biases (offline unless an API key is set) and TensorBoard; and the progress of a
training shown by a caller (the main job's stage line) instead of the trainer's own bar and per-step dicts."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gemma_ocr.errors import GemmaOcrError

if TYPE_CHECKING:
    from gemma_ocr.training.config import TrainConfig

log = logging.getLogger(__name__)


class TrainingProgress(Protocol):
    """Where a training reports its progress (:func:`reporting_progress`)."""

    def training(self, step: int, max_steps: int, metrics: dict[str, float]) -> None:
        """At the start (step 0 or the resumed one), after every step, and after every evaluation (``metrics``:
        ``eval_loss``, ``eval_cer`` ...; empty otherwise)."""


_progress: ContextVar[TrainingProgress | None] = ContextVar("gemma_ocr_training_progress", default=None)


@contextmanager
def reporting_progress(progress: TrainingProgress) -> Iterator[None]:
    """Trainings run in the block (``tune()``, also the search's trials in this thread) report to ``progress``
    instead of showing the trainer's progress bar and printing its per-step dicts; those dicts go to the log
    (logger ``gemma_ocr.training.tracking``, INFO)."""
    token = _progress.set(progress)
    try:
        yield
    finally:
        _progress.reset(token)


@dataclass
class Tracking:
    """The trackers of one training: ``report_to`` for the trainer's own integrations (TensorBoard) and
    the callbacks that log to W&B or report progress; :meth:`finish` closes this training's W&B run (and no
    other). ``quiet``: the trainer shows no progress bar and prints no per-step dicts (a caller shows the
    progress, :func:`reporting_progress`)."""

    report_to: list[str]
    callbacks: list[Any] = field(default_factory=list)
    quiet: bool = False

    def finish(self) -> None:
        for callback in self.callbacks:
            callback.finish()


def setup_tracking(config: TrainConfig) -> Tracking:
    """The trackers ``config.report_to`` selects, each with settings of this run only.

    W&B: a run of its own (``wandb.init(reinit="create_new")``) in project/group from the config, under
    ``<output_dir>/wandb``, offline when no ``WANDB_API_KEY`` (and no ``WANDB_MODE``) is set, so it can be
    uploaded later with ``wandb sync``. Nothing goes through ``os.environ`` or the global ``wandb.run``:
    trials that train at the same time in one process (``--n-jobs``) log to separate runs.
    TensorBoard: event files under ``<output_dir>/runs`` (transformers' own callback, per trainer).
    Progress: inside :func:`reporting_progress`, a callback reporting steps and evaluations to it, and the
    trainer's per-step dicts logged instead of printed.
    """
    reporters = config.reporters
    callbacks = []
    if "wandb" in reporters:
        if importlib.util.find_spec("wandb") is None:
            raise GemmaOcrError("report_to includes wandb but wandb is not installed: pip install wandb")
        callbacks.append(wandb_callback(config))
    if "tensorboard" in reporters:
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise GemmaOcrError("report_to includes tensorboard but it is not installed: pip install tensorboard")
    progress = _progress.get()
    if progress is not None:
        callbacks.append(progress_callback(progress))
    return Tracking(report_to=[r for r in reporters if r != "wandb"] or ["none"], callbacks=callbacks,
                    quiet=progress is not None)


def progress_callback(progress: TrainingProgress) -> Any:
    """A ``transformers.TrainerCallback`` reporting steps and evaluations to ``progress`` and logging the trainer's
    log entries (the dicts its progress bar would print) at INFO."""
    # transformers.integrations, which TrainerCallback loads, prints a W&B line when WANDB_MODE is set: loaded when
    # a training starts, so `sft_gemma.py --print-config` prints its JSON alone
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.training(state.global_step, state.max_steps, {})

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.training(state.global_step, state.max_steps, {})

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            progress.training(state.global_step, state.max_steps, dict(metrics or {}))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and state.is_world_process_zero:
                log.info("step %d of %d: %s", state.global_step, state.max_steps, json.dumps(logs, default=str))

        def finish(self) -> None:
            """Nothing to close (:meth:`Tracking.finish` calls it on every callback)."""

    return ReportProgress()


#: Trainer log entries that are run totals: they go to the run's summary, not its history.
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def _wandb_keys(logs: dict[str, Any]) -> dict[str, Any]:
    """``eval_loss`` -> ``eval/loss``, ``loss`` -> ``train/loss`` (the names transformers' W&B callback uses)."""
    out = {}
    for key, value in logs.items():
        for prefix in ("eval_", "test_"):
            if key.startswith(prefix):
                out[f"{prefix[:-1]}/{key[len(prefix):]}"] = value
                break
        else:
            out[f"train/{key}"] = value
    return out


def wandb_callback(config: TrainConfig) -> Any:
    """A ``transformers.TrainerCallback`` logging one training to a W&B run of its own."""
    # transformers.integrations, which TrainerCallback loads, prints a W&B line when WANDB_MODE is set: loaded when
    # a training starts, so `sft_gemma.py --print-config` prints its JSON alone
    from transformers import TrainerCallback

    class WandbRun(TrainerCallback):
        """Opens the run at the start of training, logs every trainer log entry, closes on :meth:`finish`."""

        def __init__(self) -> None:
            self.run: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if self.run is not None or not state.is_world_process_zero:
                return
            import wandb  # an optional extra: only a run that reports to W&B needs it

            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            if mode == "offline":
                log.info("W&B: no WANDB_API_KEY, logging offline (upload later with `wandb sync`)")
            out = Path(config.output_dir).resolve()
            out.mkdir(parents=True, exist_ok=True)
            run_config = args.to_dict()
            if getattr(model, "peft_config", None):
                run_config["peft_config"] = json.loads(json.dumps({k: v.to_dict() for k, v in model.peft_config.items()},
                                                                  default=str))
            self.run = wandb.init(project=config.wandb_project, group=config.wandb_group, name=args.run_name,
                                  dir=str(out), mode=mode, config=run_config, reinit="create_new",
                                  settings=wandb.Settings(silent=True))
            self.run.define_metric("train/global_step")
            self.run.define_metric("*", step_metric="train/global_step", step_sync=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if self.run is None or not logs:
                return
            for key in SUMMARY_KEYS:
                if key in logs:
                    self.run.summary[key] = logs[key]
            rest = {k: v for k, v in logs.items() if k not in SUMMARY_KEYS}
            self.run.log({**_wandb_keys(rest), "train/global_step": state.global_step})

        def finish(self) -> None:
            if self.run is not None:
                self.run.finish()
                self.run = None

    return WandbRun()


def read_offline_wandb_history(run_file: str | os.PathLike[str]) -> list[dict]:
    """The history rows (``{"train/loss": ..., "eval/loss": ..., "train/global_step": ...}``) of an offline
    ``run-*.wandb`` file, to check what a run logged before it is synced.

    The file is a LevelDB-style log (32 KiB blocks of checksummed records) of W&B protobuf records.
    """
    from wandb.proto import wandb_internal_pb2  # an optional extra: only reading a W&B run file needs it

    data = Path(run_file).read_bytes()
    if not data.startswith(b":W&B"):
        raise GemmaOcrError(f"{run_file}: not a W&B run file")
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
            pending = b""
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
