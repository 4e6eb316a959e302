"""Trainers: :class:`BaseTrainer` (the loop) and :class:`OCRTrainer` (decoding, metrics, error analysis).

One epoch = a pass over the training loader (gradient clipping, optional bf16 autocast on CUDA,
per-step cosine schedule) then a validation pass. After each epoch the trainer logs to the
console, ``logs/training_<time>.log`` and TensorBoard, saves checkpoints (every
``save_every_n_epochs``, the last epoch, and ``best_model.pt`` whenever the monitored metric
improves), steps the scheduler, consults early stopping, and calls ``epoch_callback(epoch,
metrics)``; a callback returning True stops the run (used for pruning). At the end the best
weights are restored into the model.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gemma_ocr.config_files import read_config_file
from gemma_ocr.errors import ConfigurationError
from gemma_ocr.khmer_digits.dataset import create_data_loaders
from gemma_ocr.khmer_digits.generator import GeneratorConfig, generate_dataset
from gemma_ocr.khmer_digits.losses import OCRLoss
from gemma_ocr.khmer_digits.metrics import OCRMetrics
from gemma_ocr.khmer_digits.models import count_parameters, create_model
from gemma_ocr.khmer_digits.utils import CheckpointManager, EarlyStopping, TrainingConfig, setup_training_environment
from gemma_ocr.khmer_digits.vocab import IDX_TO_CHAR, greedy_decode

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], bool]


def create_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; AdamW applies weight decay to weights only (not biases or norms)."""
    betas = tuple(config.optimizer_betas)
    if config.optimizer_type == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=betas, weight_decay=config.weight_decay)
    if config.optimizer_type == "adamw":
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=betas)
    raise ConfigurationError(f"unknown optimizer_type {config.optimizer_type!r} (adam or adamw)")


def create_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, steps_per_epoch: int = 1) -> Any:
    """``cosine`` (linear warmup then cosine to ``min_lr``, stepped every batch), ``steplr`` and
    ``plateau`` (stepped every epoch), or ``none``."""
    kind = config.scheduler_type
    if kind == "cosine":
        total = max(1, config.num_epochs * steps_per_epoch)
        warmup = min(total - 1, int(round(config.warmup_epochs * steps_per_epoch)))
        floor = min(1.0, config.min_lr / config.learning_rate)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if kind == "steplr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=config.early_stopping_mode, factor=config.factor,
                                                          patience=config.patience, min_lr=config.min_lr)
    if kind == "none":
        return None
    raise ConfigurationError(f"unknown scheduler_type {kind!r} (cosine, steplr, plateau or none)")


class BaseTrainer(ABC):
    """The training loop; subclasses say how to build the loss and metrics and how to decode."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, config: TrainingConfig,
                 device: torch.device | str | None = None, epoch_callback: EpochCallback | None = None, use_amp: bool = False):
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epoch_callback = epoch_callback
        self.use_amp = use_amp and self.device.type == "cuda"
        self.criterion = self._create_loss_function().to(self.device)
        self.optimizer = create_optimizer(model, config)
        self.scheduler = create_scheduler(self.optimizer, config, steps_per_epoch=max(1, len(train_loader)))
        self.step_per_batch = config.scheduler_type == "cosine"
        self.dir = config.experiment_dir
        for sub in ("checkpoints", "logs", "tensorboard", "configs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointManager(self.dir / "checkpoints", keep_n=config.keep_n_checkpoints)
        self.early_stopping = EarlyStopping(config.early_stopping_patience, config.early_stopping_min_delta, config.early_stopping_mode)
        self.history: list[dict[str, float]] = []
        self.global_step = 0
        self.writer = None

    # --- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _create_loss_function(self) -> nn.Module: ...

    @abstractmethod
    def _create_metrics_calculator(self) -> Any: ...

    @abstractmethod
    def _decode_predictions(self, logits: torch.Tensor) -> list[str]: ...

    # --- the loop ------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        metrics = self._create_metrics_calculator()
        total, n = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
        for batch_index, (images, targets) in enumerate(bar):
            images, targets = images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(images)
                loss = self.criterion(logits.float(), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {self.global_step} (lower learning_rate)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.gradient_clip_norm > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip_norm)
            self.optimizer.step()
            if self.scheduler is not None and self.step_per_batch:
                self.scheduler.step()
            self.global_step += 1
            total += loss.item() * len(images)
            n += len(images)
            metrics.update(self._decode_predictions(logits.detach()), targets)
            if bar.disable and (batch_index + 1) % max(1, len(self.train_loader) // 5) == 0:
                log.info("epoch %d: %d/%d batches, loss %.4f", epoch, batch_index + 1, len(self.train_loader), loss.item())
            if self.global_step % self.config.log_every_n_steps == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
                if self.writer:
                    self.writer.add_scalar("train/step_loss", loss.item(), self.global_step)
                    self.writer.add_scalar("train/learning_rate", lr, self.global_step)
        m = metrics.compute()
        return {"train_loss": total / max(n, 1), "train_char_accuracy": m["char_accuracy"], "train_seq_accuracy": m["seq_accuracy"]}

    @torch.no_grad()
    def _validate_epoch(self) -> dict[str, float]:
        self.model.eval()
        metrics = self._create_metrics_calculator()
        total, n = 0.0, 0
        for images, targets in self.val_loader:
            images, targets = images.to(self.device), targets.to(self.device)
            with self._autocast():
                logits = self.model(images)
            total += self.criterion(logits.float(), targets).item() * len(images)
            n += len(images)
            metrics.update(self._decode_predictions(logits), targets)
        self.last_val_metrics = metrics
        m = metrics.compute()
        return {"val_loss": total / max(n, 1), "val_char_accuracy": m["char_accuracy"], "val_seq_accuracy": m["seq_accuracy"],
                "val_edit_distance": m["edit_distance"]}

    def _state(self) -> dict[str, Any]:
        return {
            "model_state": self.model.state_dict(),
            "model_config": getattr(self.model, "config", None),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "training_config": self.config.to_dict(),
        }

    def _open_logs(self) -> tuple[logging.Handler, int]:
        stamp = time.strftime("%Y%m%d_%H%M%S")
        handler = logging.FileHandler(self.dir / "logs" / f"training_{stamp}.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("gemma_ocr.khmer_digits")
        root.addHandler(handler)
        old_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        if self.config.use_tensorboard:
            # an optional extra: tensorboard is installed only for use_tensorboard
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        return handler, old_level

    def train(self) -> dict[str, Any]:
        """Run up to ``num_epochs`` epochs; returns the summary (best metrics, history, checkpoint paths)."""
        cfg = self.config
        self.config.save_yaml(self.dir / "configs" / "training_config.yaml")
        handler, old_level = self._open_logs()
        monitor, stopped_by, pruned = cfg.early_stopping_monitor, None, False
        start = time.time()
        try:
            log.info("training %s: %d epochs, %d train batches, device %s", cfg.experiment_name, cfg.num_epochs, len(self.train_loader), self.device)
            for epoch in range(1, cfg.num_epochs + 1):
                t0 = time.time()
                metrics = {**self._train_epoch(epoch), **self._validate_epoch()}
                metrics.update(epoch=epoch, learning_rate=self.optimizer.param_groups[0]["lr"], epoch_time=time.time() - t0)
                self.history.append(metrics)
                value = metrics[monitor]
                is_best = self.early_stopping.is_improvement(value)
                stop = self.early_stopping(value, self.model, epoch)
                regular = epoch % cfg.save_every_n_epochs == 0 or epoch == cfg.num_epochs or stop
                self.checkpoints.save(self._state(), epoch, _scalars(metrics), is_best=is_best, regular=regular)
                if is_best:
                    log.info("epoch %d: best model saved (%s=%.4f)", epoch, monitor, value)
                log.info("Epoch %d Results: train_loss=%.4f val_loss=%.4f val_char_accuracy=%.4f val_seq_accuracy=%.4f lr=%.2e (%.1fs)",
                         epoch, metrics["train_loss"], metrics["val_loss"], metrics["val_char_accuracy"],
                         metrics["val_seq_accuracy"], metrics["learning_rate"], metrics["epoch_time"])
                if self.writer:
                    for k, v in _scalars(metrics).items():
                        if k != "epoch":
                            self.writer.add_scalar(f"epoch/{k}", v, epoch)
                if self.scheduler is not None and not self.step_per_batch:
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        self.scheduler.step(value)
                    else:
                        self.scheduler.step()
                if self.epoch_callback is not None and self.epoch_callback(epoch, _scalars(metrics)):
                    stopped_by, pruned = "callback", True
                    log.info("epoch %d: stopped by the epoch callback (pruned)", epoch)
                    break
                if stop:
                    stopped_by = "early_stopping"
                    log.info("epoch %d: early stopping (%s has not improved for %d epochs)", epoch, monitor, cfg.early_stopping_patience)
                    break
        finally:
            root = logging.getLogger("gemma_ocr.khmer_digits")
            root.removeHandler(handler)
            root.setLevel(old_level)
            handler.close()
            if self.writer:
                self.writer.close()
        self.early_stopping.restore(self.model)
        return self._summary(time.time() - start, stopped_by, pruned)

    def _summary(self, elapsed: float, stopped_by: str | None, pruned: bool) -> dict[str, Any]:
        h = self.history
        best = self.checkpoints.best or {}
        return {
            "training_time": elapsed,
            "total_epochs": len(h),
            "best_epoch": best.get("epoch"),
            "best_metrics": best.get("metrics", {}),
            "best_val_loss": min(x["val_loss"] for x in h) if h else float("nan"),
            "best_val_char_accuracy": max(x["val_char_accuracy"] for x in h) if h else 0.0,
            "best_val_seq_accuracy": max(x["val_seq_accuracy"] for x in h) if h else 0.0,
            "final_train_loss": h[-1]["train_loss"] if h else float("nan"),
            "best_checkpoint": best.get("path"),
            "latest_checkpoint": str(self.checkpoints.latest()) if self.checkpoints.latest() else None,
            "stopped_by": stopped_by,
            "pruned": pruned,
            "history": h,
        }


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class OCRTrainer(BaseTrainer):
    """Trainer for the Khmer-digit models: CTC or attention decoding, OCR metrics, error analysis."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.idx_to_char = dict(IDX_TO_CHAR)

    def _create_loss_function(self) -> nn.Module:
        cfg = self.config
        is_ctc = bool(getattr(self.model, "is_ctc", False))
        if is_ctc != (cfg.loss_type == "ctc"):
            need = "ctc" if is_ctc else "crossentropy or focal"
            raise ConfigurationError(f"model {cfg.model_name!r} needs loss_type {need}, got {cfg.loss_type!r}")
        return OCRLoss(cfg.loss_type, label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha)

    def _create_metrics_calculator(self) -> OCRMetrics:
        return OCRMetrics(self.idx_to_char)

    def _decode_predictions(self, logits: torch.Tensor) -> list[str]:
        return greedy_decode(logits, ctc=bool(getattr(self.model, "is_ctc", False)))

    def _calculate_metrics(self, predictions: list[str], targets: list[str]) -> dict[str, float]:
        m = OCRMetrics(self.idx_to_char)
        m.update(predictions, targets)
        return m.compute()

    def _generate_confusion_matrix(self, predictions: list[str], targets: list[str]) -> np.ndarray:
        m = OCRMetrics(self.idx_to_char)
        m.update(predictions, targets)
        return m.confusion_matrix()

    def _analyze_errors(self, predictions: list[str], targets: list[str], top_k: int = 10) -> dict[str, Any]:
        """Counts of wrong lengths and substitutions, and the most frequent confusions."""
        matrix = self._generate_confusion_matrix(predictions, targets)
        chars = "".join(self.idx_to_char[i] for i in range(10))
        pairs = [(chars[i], chars[j], int(matrix[i, j])) for i in range(10) for j in range(10) if i != j and matrix[i, j]]
        pairs.sort(key=lambda x: -x[2])
        wrong = [(p, t) for p, t in zip(predictions, targets) if p != t]
        return {
            "errors": len(wrong),
            "length_errors": sum(len(p) != len(t) for p, t in wrong),
            "too_short": sum(len(p) < len(t) for p, t in wrong),
            "too_long": sum(len(p) > len(t) for p, t in wrong),
            "top_confusions": [{"target": a, "predicted": b, "count": c} for a, b, c in pairs[:top_k]],
            "examples": [{"target": t, "predicted": p} for p, t in wrong[:top_k]],
        }

    def error_report(self) -> dict[str, Any]:
        """Error analysis of the last validation pass."""
        m = getattr(self, "last_val_metrics", None)
        if m is None:
            return {}
        return self._analyze_errors(m.predictions, m.targets)


def create_model_from_config(config: TrainingConfig) -> nn.Module:
    """The model preset named by ``config.model_name``, with overrides from ``model_config_path`` if set."""
    overrides: dict[str, Any] = {}
    if config.model_config_path:
        overrides = read_config_file(config.model_config_path, "model config", error=ConfigurationError) or {}
        if not isinstance(overrides, dict):
            raise ConfigurationError(f"{config.model_config_path}: expected a mapping of model options")
    return create_model(config.model_name, vocab_size=config.vocab_size, max_sequence_length=config.max_sequence_length, **overrides)


def create_data_loaders_from_config(config: TrainingConfig, image_height: int = 32, image_width: int = 128) -> tuple[DataLoader, DataLoader]:
    """Loaders for ``config.metadata_path``; renders the default dataset first when it is missing and allowed."""
    meta = Path(config.metadata_path)
    if not meta.is_file() and config.generate_if_missing:
        log.info("%s not found: rendering the default Khmer-digit dataset there", meta)
        generate_dataset(meta.parent, GeneratorConfig(image_height=image_height, image_width=image_width))
    return create_data_loaders(
        meta, batch_size=config.batch_size, num_workers=config.num_workers, pin_memory=config.pin_memory,
        augmentation=config.augmentation, train_split=config.train_split, val_split=config.val_split,
        image_height=image_height, image_width=image_width, max_sequence_length=config.max_sequence_length,
        max_train_samples=config.max_train_samples, seed=config.seed,
    )


def train_from_config(config: TrainingConfig, epoch_callback: EpochCallback | None = None) -> dict[str, Any]:
    """Set up, build data and model, train; returns the trainer's summary plus model facts."""
    device, use_amp = setup_training_environment(config)
    model = create_model_from_config(config)
    height, width = model.config["image_height"], model.config["image_width"]
    train_loader, val_loader = create_data_loaders_from_config(config, height, width)
    trainer = OCRTrainer(model, train_loader, val_loader, config, device=device, epoch_callback=epoch_callback, use_amp=use_amp)
    summary = trainer.train()
    summary["model_parameters"] = count_parameters(model)
    summary["error_analysis"] = trainer.error_report()
    return summary
