"""The Khmer-digits CNN as a backend of the suite: train one trial, predict, score an OCR data file.

* :func:`train_trial` trains with a dict of hyperparameters (what a search trial samples) and
  reports the validation character accuracy after each epoch to a callback that may prune.
* :func:`predict` reads a checkpoint and turns image files into Khmer-digit strings (:func:`predict_paths` with a
  loaded model: what :class:`gemma_ocr.evaluation.engines.KhmerCnnEngine`, the ``khmer-cnn`` backend of evaluate.py
  and transcribe.py, reads images with).
* :func:`evaluate_ocr_file` scores a checkpoint on an OCR input file (``[{image_path, ocr_text}]``)
  with the same CER/F1 document as the served Gemma model (:func:`gemma_ocr.scoring.results.build_document`).
* :func:`export_ocr_json` writes a generated split as such an OCR input file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gemma_ocr.data.images import open_image
from gemma_ocr.data.records import load_records
from gemma_ocr.errors import ConfigurationError, DataLoaderError, GemmaOcrError
from gemma_ocr.khmer_digits.dataset import get_val_transforms
from gemma_ocr.khmer_digits.generator import export_ocr_json
from gemma_ocr.khmer_digits.models import PRESETS, model_from_config
from gemma_ocr.khmer_digits.trainer import train_from_config
from gemma_ocr.khmer_digits.utils import CheckpointManager, TrainingConfig
from gemma_ocr.scoring.results import STATUS_EMPTY, STATUS_ERROR, STATUS_OK, ScoringConfig, build_document
from gemma_ocr.settings import Layer, resolve, unknown_key

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TRIAL_PARAMS", "train_trial", "predict", "evaluate_ocr_file", "export_ocr_json", "load_model"]

# The default recipe (10,000 generated training images, 2 epochs): the lite CTC preset reaches >= 0.99
# character / >= 0.95 sequence accuracy on held-out synthetic data within minutes on two CPU cores
# (benchmarks/khmer_digits_accuracy.py).
DEFAULT_TRIAL_PARAMS: dict[str, Any] = {
    "model": "lite",
    "learning_rate": 2e-3,
    "batch_size": 32,
    "weight_decay": 1e-4,
    "label_smoothing": 0.0,
    "epochs": 2,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "warmup_epochs": 0.3,
    "gradient_clip_norm": 5.0,
}

# Trial-parameter aliases -> TrainingConfig fields.
ALIASES = {
    "model": "model_name", "preset": "model_name", "epochs": "num_epochs", "optimizer": "optimizer_type",
    "scheduler": "scheduler_type", "lr": "learning_rate", "data": "metadata_path",
}


def trial_config(params: dict[str, Any], output_dir: str | os.PathLike[str]) -> TrainingConfig:
    """A :class:`TrainingConfig`: the default recipe (and a trial's run settings) < ``params`` (aliases accepted)."""
    given = {ALIASES.get(key, key): value for key, value in params.items()}
    known = TrainingConfig.field_names()
    for key in given:  # before the layer, so that an alias is a valid name to point to
        if key not in known:
            raise unknown_key("Khmer-digits trial", key, known + list(ALIASES), what="hyperparameter", error=ConfigurationError)
    out = Path(output_dir)
    defaults = {ALIASES.get(key, key): value for key, value in DEFAULT_TRIAL_PARAMS.items()}
    model = given.get("model_name", defaults["model_name"])
    defaults.update(output_dir=str(out.parent), experiment_name=out.name or "trial", use_tensorboard=False,
                    save_every_n_epochs=1000, keep_n_checkpoints=1, early_stopping_patience=1000,
                    loss_type="ctc" if PRESETS.get(str(model), {}).get("head") == "ctc" else "crossentropy")
    return resolve(TrainingConfig, Layer("Khmer-digits trial defaults", defaults),
                   Layer("Khmer-digits trial parameters", given), error=ConfigurationError)


def train_trial(params: dict[str, Any], output_dir: str | os.PathLike[str],
                report: Callable[[int, float], bool] | None = None) -> dict[str, Any]:
    """Train one model with ``params`` into ``output_dir``.

    ``params`` take :class:`TrainingConfig` field names or the aliases ``model``/``preset``,
    ``epochs``, ``optimizer``, ``scheduler``, ``lr``, ``data`` (metadata path); missing ones come
    from :data:`DEFAULT_TRIAL_PARAMS`. ``loss_type`` follows the preset's head unless given.
    After each epoch ``report(epoch, val_char_accuracy)`` is called (higher is better); if it
    returns True the run stops and the result has ``pruned: True``.

    Returns ``val_loss``, ``char_accuracy``, ``seq_accuracy``, ``edit_distance`` (of the best epoch,
    whose weights are in ``checkpoint``), ``best_epoch``, ``epochs``, ``pruned``, ``training_time``,
    ``model_parameters``, ``history`` and ``checkpoint``.
    """
    config = trial_config(params, output_dir)
    callback = None
    if report is not None:
        def callback(epoch: int, metrics: dict[str, float]) -> bool:
            return bool(report(epoch, metrics["val_char_accuracy"]))

    summary = train_from_config(config, epoch_callback=callback)
    best = summary["best_metrics"]
    return {
        "val_loss": best.get("val_loss"),
        "char_accuracy": best.get("val_char_accuracy"),
        "seq_accuracy": best.get("val_seq_accuracy"),
        "edit_distance": best.get("val_edit_distance"),
        "best_epoch": summary["best_epoch"],
        "epochs": summary["total_epochs"],
        "pruned": summary["pruned"],
        "training_time": summary["training_time"],
        "model_parameters": summary["model_parameters"],
        "checkpoint": summary["best_checkpoint"],
        "history": summary["history"],
        "config": config.to_dict(),
    }


def load_model(checkpoint_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model stored in a checkpoint, in eval mode."""
    state = CheckpointManager.load(checkpoint_path, map_location=device)
    if not isinstance(state, dict) or "model_state" not in state or not state.get("model_config"):
        raise DataLoaderError(f"{checkpoint_path}: not a Khmer-digits checkpoint (no model_state/model_config)")
    model = model_from_config(state["model_config"])
    model.load_state_dict(state["model_state"])
    return model.to(device).eval()


def predict_paths(model: torch.nn.Module, image_paths: list[str], batch_size: int = 128, device: str = "cpu",
                  load: Callable[[str], Image.Image] = open_image) -> tuple[list[str | None], dict[int, str]]:
    """Read each image once (``load``: the project's opener by default) and predict in batches: (prediction or None
    per path, {index: error} of unreadable ones)."""
    transform = get_val_transforms(model.config["image_height"], model.config["image_width"])
    out: list[str | None] = [None] * len(image_paths)
    errors: dict[int, str] = {}
    for start in range(0, len(image_paths), batch_size):
        tensors, indices = [], []
        for i in range(start, min(start + batch_size, len(image_paths))):
            try:
                tensors.append(transform(load(image_paths[i])))
                indices.append(i)
            except GemmaOcrError as e:
                errors[i] = str(e)
        if tensors:
            for i, text in zip(indices, model.predict(torch.stack(tensors).to(device))):
                out[i] = text
    return out, errors


def predict(checkpoint_path: str | os.PathLike[str], image_paths: list[str], batch_size: int = 128,
            device: str = "cpu") -> list[str]:
    """Khmer-digit strings for ``image_paths`` (any size; each is fitted to the model's input)."""
    predictions, errors = predict_paths(load_model(checkpoint_path, device), image_paths, batch_size, device)
    if errors:
        raise GemmaOcrError(next(iter(errors.values())))
    return predictions  # type: ignore[return-value]


def evaluate_ocr_file(checkpoint_path: str | os.PathLike[str], data_file: str | os.PathLike[str],
                      model_name: str | None = None, top_k: int | None = None,
                      scoring: ScoringConfig | None = None) -> dict[str, Any]:
    """Score a checkpoint on (the first ``top_k`` samples of) an OCR input file; returns the results document of evaluate.py's layout.

    An image that is missing or unreadable becomes a sample with status ``error`` (and its message),
    never scored as a prediction.
    """
    all_records = load_records(data_file)
    records = all_records if top_k is None else all_records[:top_k]
    predictions, errors = predict_paths(load_model(checkpoint_path), [r.image_path for r in records])
    samples = []
    for i, r in enumerate(records):
        if i in errors:
            samples.append({"index": i, "image_path": r.image_path, "label": r.text, "prediction": None,
                            "status": STATUS_ERROR, "error": errors[i]})
        else:
            p = predictions[i]
            samples.append({"index": i, "image_path": r.image_path, "label": r.text, "prediction": p,
                            "status": STATUS_OK if p else STATUS_EMPTY})
    if errors:
        log.warning("%d of %d images could not be read (status error): first: %s", len(errors), len(records), next(iter(errors.values())))
    return build_document(samples, model_name or f"khmer-digits:{checkpoint_path}", scoring=scoring,
                          backend="khmer_digits", data_file=str(data_file), dataset_samples=len(all_records), top_k=top_k)
