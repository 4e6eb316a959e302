"""Training utilities: the training configuration, checkpoints, early stopping, environment set-up."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from gemma_ocr.config_files import read_config_file
from gemma_ocr.errors import ConfigurationError, DataLoaderError
from gemma_ocr.io import atomic_write_json, atomic_write_text
from gemma_ocr.khmer_digits.losses import LOSS_TYPES
from gemma_ocr.layout import LAYOUT
from gemma_ocr.settings import FieldError, Settings

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("cosine", "steplr", "plateau", "none")
MONITORS = ("val_char_accuracy", "val_seq_accuracy", "val_loss", "val_edit_distance")


@dataclass
class TrainingConfig(Settings):
    """Everything one training run needs. Field names follow the seed's schema; extras are marked.

    Read through the configuration layer (:mod:`gemma_ocr.settings`): :meth:`from_dict` checks each value
    against its field's type (YAML's ``1e-6``, a string, is the number it spells) and names an unknown
    field's closest match; errors are :class:`ConfigurationError`.
    """

    error = ConfigurationError

    # Model
    model_name: str = "medium"
    model_config_path: str = ""  # optional YAML of KhmerDigitsOCR overrides (e.g. lstm_hidden: 64)
    vocab_size: int = 13
    max_sequence_length: int = 9
    # Data
    metadata_path: str = str(LAYOUT.khmer_metadata)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 32
    num_workers: int = 0  # images are cached in memory; worker processes rarely pay off on a CPU
    pin_memory: bool = False
    augmentation: bool = True
    generate_if_missing: bool = True  # extra: render the default dataset when metadata_path is absent
    max_train_samples: int | None = None  # extra: use only the first N training samples
    # Training
    device: str = "auto"
    mixed_precision: bool = False
    num_epochs: int = 40
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    gradient_clip_norm: float = 1.0
    log_every_n_steps: int = 25
    save_every_n_epochs: int = 5
    keep_n_checkpoints: int = 3
    use_tensorboard: bool = True
    seed: int = 42  # extra
    # extra: torch CPU threads. One: the CNN is small, and on a busy machine two threads spin-wait for each
    # other and cost several times the CPU (benchmarks/RESULTS_khmer_digits.md); 0 = torch's default (all cores).
    num_threads: int = 1
    # Loss
    loss_type: str = "crossentropy"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0  # extra
    focal_alpha: float | list[float] | None = None  # extra
    # Optimizer
    optimizer_type: str = "adam"
    optimizer_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Scheduler
    scheduler_type: str = "steplr"
    warmup_epochs: float = 0
    min_lr: float = 1e-6
    step_size: int = 10
    gamma: float = 0.5
    patience: int = 5
    factor: float = 0.5
    # Early stopping
    early_stopping_patience: int = 10
    early_stopping_min_delta: float = 1e-4
    early_stopping_monitor: str = "val_char_accuracy"
    early_stopping_mode: str = "max"
    # Output
    experiment_name: str = "hyperparameter_experiment"
    output_dir: str = str(LAYOUT.khmer_runs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainingConfig:
        data = read_config_file(path, "training config", error=ConfigurationError)
        return cls.from_dict(data or {}, source=str(path))

    def save_yaml(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    @property
    def experiment_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment_name

    def validate(self) -> None:
        """Types, then choices and ranges; raise :class:`FieldError` on the first bad field."""
        super().validate()
        choices = {"loss_type": LOSS_TYPES, "optimizer_type": OPTIMIZERS, "scheduler_type": SCHEDULERS,
                   "early_stopping_monitor": MONITORS, "early_stopping_mode": ("min", "max"),
                   "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
                raise FieldError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        self.at_least(1, "batch_size", "num_epochs", "save_every_n_epochs", "keep_n_checkpoints", "log_every_n_steps",
                      "step_size")
        if self.learning_rate <= 0:
            raise FieldError("learning_rate", f"must be > 0, got {self.learning_rate}")
        self.at_least(0, "weight_decay", "gradient_clip_norm", "warmup_epochs", "min_lr", "num_workers", "num_threads")
        if not 0 <= self.label_smoothing < 1:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if len(self.optimizer_betas) != 2:
            raise FieldError("optimizer_betas", f"must be two numbers [beta1, beta2], got {self.optimizer_betas}")


def setup_training_environment(config: TrainingConfig) -> tuple[torch.device, bool]:
    """Seed everything, set CPU threads, pick the device; returns ``(device, use_amp)``.

    Mixed precision (bf16 autocast) is used only on CUDA; on a CPU it is turned off.
    """
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigurationError(f"device={config.device!r} but CUDA is not available (use device: auto or cpu)")
        device = torch.device(config.device)
    use_amp = bool(config.mixed_precision and device.type == "cuda")
    if config.mixed_precision and not use_amp:
        log.info("mixed_precision is off: it only helps on CUDA")
    return device, use_amp


class CheckpointManager:
    """Saves ``checkpoint_epoch_NNN.pt`` files, keeps the newest ``keep_n`` and a separate ``best_model.pt``.

    ``checkpoints.json`` beside them lists what is kept, with each one's metrics. A checkpoint holds
    tensors and plain values only (dicts, lists, numbers, strings), and is read with
    ``torch.load(weights_only=True)``: a file holding other Python objects is refused, since
    unpickling it could run code.
    """

    BEST = "best_model.pt"

    def __init__(self, checkpoint_dir: str | os.PathLike[str], keep_n: int = 3):
        if keep_n < 1:
            raise ConfigurationError(f"keep_n_checkpoints must be >= 1, got {keep_n}")
        self.dir = Path(checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_n = keep_n
        self.saved: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    @property
    def best_path(self) -> Path:
        return self.dir / self.BEST

    def save(self, state: dict[str, Any], epoch: int, metrics: dict[str, float], is_best: bool = False, regular: bool = True) -> Path | None:
        """Write a regular checkpoint (when ``regular``) and, when ``is_best``, the best one; prune old ones."""
        state = {**state, "epoch": epoch, "metrics": metrics}
        path = None
        if regular:
            path = self.dir / f"checkpoint_epoch_{epoch:03d}.pt"
            _atomic_torch_save(state, path)
            self.saved = [s for s in self.saved if s["epoch"] != epoch] + [{"epoch": epoch, "path": str(path), "metrics": metrics}]
            while len(self.saved) > self.keep_n:
                old = self.saved.pop(0)
                Path(old["path"]).unlink(missing_ok=True)
        if is_best:
            _atomic_torch_save(state, self.best_path)
            self.best = {"epoch": epoch, "path": str(self.best_path), "metrics": metrics}
        atomic_write_json(self.dir / "checkpoints.json", {"kept": self.saved, "best": self.best}, indent=2)
        return path

    def latest(self) -> Path | None:
        return Path(self.saved[-1]["path"]) if self.saved else None

    @staticmethod
    def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise DataLoaderError(f"checkpoint not found: {path} (check the path; training writes checkpoints/best_model.pt)")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused a Python object: never unpickle it
            found = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
            raise DataLoaderError(f"{path}: not a Khmer-digits checkpoint: it holds Python objects beyond tensors and "
                                  f"plain values{f' ({found[:200]})' if found else ''}; loading it could run code, so it "
                                  f"is refused (use a checkpoint written by this trainer)") from None
        except Exception as e:  # a truncated or foreign file
            raise DataLoaderError(f"checkpoint cannot be read: {path} ({type(e).__name__}: {e})") from None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class EarlyStopping:
    """Stops when the monitored metric has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` it keeps a copy of the best weights; :meth:`restore` puts them back.
    """

    def __init__(self, patience: int = 10, min_delta: float = 1e-4, mode: str = "max", restore_best_weights: bool = True):
        if mode not in ("min", "max"):
            raise ConfigurationError(f"early stopping mode must be min or max, got {mode!r}")
        self.patience, self.min_delta, self.mode = patience, abs(min_delta), mode
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch = -1
        self.counter = 0
        self.should_stop = False
        self.history: list[float] = []
        self._best_state: dict[str, torch.Tensor] | None = None

    def is_improvement(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def __call__(self, value: float, model: torch.nn.Module | None = None, epoch: int | None = None) -> bool:
        """Record one epoch's value; returns True when training should stop."""
        self.history.append(value)
        if self.is_improvement(value):
            self.best, self.counter = value, 0
            self.best_epoch = epoch if epoch is not None else len(self.history) - 1
            if model is not None and self.restore_best_weights:
                self._best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            self.counter += 1
            if self.counter >= self.patience:
                self.should_stop = True
        return self.should_stop

    def restore(self, model: torch.nn.Module) -> bool:
        """Load the best weights into ``model``; False if none were kept."""
        if self._best_state is None:
            return False
        model.load_state_dict(self._best_state)
        return True


def slug(name: str) -> str:
    """A file-system-safe experiment name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"
