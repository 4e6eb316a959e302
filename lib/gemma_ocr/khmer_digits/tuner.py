"""The YAML experiment tuner: runs named experiments one after another and records each result.

Configuration file layout (see configs/khmer_digits/phase3_simple_configs.yaml)::

    experiments:
      <name>:
        experiment_name: <name>
        model: {name: small|medium|large|ctc|ctc_medium|lite, config_path: ...}
        data: {metadata_path, train_split, val_split, num_workers, pin_memory, augmentation, ...}
        training: {batch_size, learning_rate, weight_decay, num_epochs, loss_type, label_smoothing, ...}
        optimizer: {type: adam|adamw, learning_rate, weight_decay, betas}
        scheduler: {type: cosine|steplr|plateau, warmup_epochs, min_lr, step_size, gamma, patience, factor}
        early_stopping: {patience, min_delta, monitor, mode}
    targets: {character_accuracy, sequence_accuracy, training_time_per_epoch, convergence_epochs}

Each experiment trains into ``<output_dir>/<experiment_name>/`` (checkpoints, logs, tensorboard,
configs). The results JSON is rewritten (atomically) after every experiment. An experiment whose
configuration or training fails is recorded with ``status: failed`` and its error, and the rest
still run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from gemma_ocr.config_files import read_config_file
from gemma_ocr.errors import ConfigurationError, ExperimentFailedError
from gemma_ocr.io import atomic_write_json, atomic_write_text
from gemma_ocr.khmer_digits.models import PRESETS
from gemma_ocr.khmer_digits.trainer import train_from_config
from gemma_ocr.khmer_digits.utils import TrainingConfig, slug
from gemma_ocr.layout import LAYOUT
from gemma_ocr.settings import unknown_key

log = logging.getLogger(__name__)


# Section key -> TrainingConfig field.
SECTIONS: dict[str, dict[str, str]] = {
    "model": {"name": "model_name", "config_path": "model_config_path", "vocab_size": "vocab_size",
              "max_sequence_length": "max_sequence_length"},
    "data": {k: k for k in ("metadata_path", "train_split", "val_split", "num_workers", "pin_memory", "augmentation",
                            "generate_if_missing", "max_train_samples")},
    "training": {k: k for k in ("device", "mixed_precision", "gradient_clip_norm", "log_every_n_steps", "save_every_n_epochs",
                                "keep_n_checkpoints", "use_tensorboard", "batch_size", "learning_rate", "weight_decay",
                                "num_epochs", "loss_type", "label_smoothing", "focal_gamma", "focal_alpha", "seed", "num_threads")},
    "optimizer": {"type": "optimizer_type", "learning_rate": "learning_rate", "weight_decay": "weight_decay", "betas": "optimizer_betas"},
    "scheduler": {"type": "scheduler_type", "warmup_epochs": "warmup_epochs", "min_lr": "min_lr", "step_size": "step_size",
                  "gamma": "gamma", "patience": "patience", "factor": "factor"},
    "early_stopping": {"patience": "early_stopping_patience", "min_delta": "early_stopping_min_delta",
                       "monitor": "early_stopping_monitor", "mode": "early_stopping_mode"},
}
EXPERIMENT_KEYS = ("experiment_name", "description", *SECTIONS)
TOP_KEYS = ("experiments", "targets")
TARGET_KEYS = ("character_accuracy", "sequence_accuracy", "training_time_per_epoch", "convergence_epochs")
HYPERPARAMETERS = ("model_name", "batch_size", "learning_rate", "weight_decay", "loss_type", "scheduler_type", "optimizer_type")


def create_training_config(experiment_config: dict[str, Any], output_dir: str | Path | None = None,
                           name: str | None = None) -> TrainingConfig:
    """A :class:`TrainingConfig` from one experiment's nested sections (``optimizer`` overrides ``training``)."""
    where = f"experiment {name!r}" if name else "experiment"
    if not isinstance(experiment_config, dict):
        raise ConfigurationError(f"{where}: expected a mapping of sections, got {type(experiment_config).__name__}")
    for key in experiment_config:
        if key not in EXPERIMENT_KEYS:
            raise unknown_key(where, key, EXPERIMENT_KEYS, what="section", error=ConfigurationError)
    flat: dict[str, Any] = {}
    for section in ("model", "data", "training", "optimizer", "scheduler", "early_stopping"):
        values = experiment_config.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigurationError(f"{where}: section {section!r} must be a mapping")
        keys = SECTIONS[section]
        for key in values:
            if key not in keys:
                raise unknown_key(f"{where}, section {section!r}", key, list(keys), what="field", error=ConfigurationError)
        for key, value in values.items():
            flat[keys[key]] = value
    flat["experiment_name"] = str(experiment_config.get("experiment_name") or name or "experiment")
    if output_dir is not None:
        flat["output_dir"] = str(output_dir)

    preset = PRESETS.get(str(flat.get("model_name", TrainingConfig.model_name)))
    if preset is None:
        raise ConfigurationError(f"{where}: unknown model name {flat.get('model_name')!r} (choose one of {', '.join(PRESETS)})")
    is_ctc = preset["head"] == "ctc"
    if "loss_type" not in flat:
        flat["loss_type"] = "ctc" if is_ctc else "crossentropy"
    elif is_ctc != (flat["loss_type"] == "ctc"):
        need = "ctc" if is_ctc else "crossentropy or focal"
        raise ConfigurationError(f"{where}: model {flat['model_name']!r} needs training.loss_type {need}, got {flat['loss_type']!r}")
    return TrainingConfig.from_dict(flat, source=where)


def _hyperparameters(config: TrainingConfig | None, experiment_config: dict[str, Any]) -> dict[str, Any]:
    if config is not None:
        return {k: getattr(config, k) for k in HYPERPARAMETERS}
    raw: dict[str, Any] = {}
    if isinstance(experiment_config, dict):  # best effort for a config that did not parse
        for section, keys in SECTIONS.items():
            values = experiment_config.get(section)
            if isinstance(values, dict):
                for key, value in values.items():
                    if keys.get(key) in HYPERPARAMETERS:
                        raw[keys[key]] = value
    return raw


class HyperparameterTuner:
    """Runs the experiments of a YAML file and keeps their results.

    ``num_threads`` (when not None) replaces every experiment's ``training.num_threads``.
    """

    num_threads: int | None = None

    def __init__(self, config_file: str | Path = LAYOUT.khmer_experiments, output_dir: str | Path = LAYOUT.khmer_runs,
                 results_file: str | Path | None = None, num_threads: int | None = None):
        if num_threads is not None and num_threads < 0:
            raise ConfigurationError(f"--threads must be >= 0 (0: torch's default), got {num_threads}")
        self.num_threads = num_threads
        self.config_file = Path(config_file)
        self.config = self.load_config(config_file)
        self.output_dir = Path(output_dir)
        self.timestamp = time.strftime("%Y%m%d_%H%M%S")
        self.results_file = Path(results_file) if results_file else self.output_dir / f"hyperparameter_tuning_results_{self.timestamp}.json"
        self.results: list[dict[str, Any]] = []

    @property
    def experiments(self) -> dict[str, Any]:
        return self.config["experiments"]

    @property
    def targets(self) -> dict[str, Any]:
        return self.config.get("targets") or {}

    def load_config(self, config_file: str | Path) -> dict[str, Any]:
        """Read and validate the YAML file (syntax, top-level structure)."""
        config = read_config_file(config_file, "experiment config", error=ConfigurationError)
        self.validate_config(config, str(config_file))
        return config

    def validate_config(self, config: Any, source: str = "experiment config") -> None:
        """The file must hold a non-empty ``experiments`` mapping; ``targets`` is optional."""
        if not isinstance(config, dict):
            raise ConfigurationError(f"{source}: expected a mapping with an 'experiments' section")
        for key in config:
            if key not in TOP_KEYS:
                raise unknown_key(source, key, TOP_KEYS, what="top-level key", error=ConfigurationError)
        experiments = config.get("experiments")
        if not isinstance(experiments, dict) or not experiments:
            raise ConfigurationError(f"{source}: 'experiments' must be a non-empty mapping of name -> settings")
        targets = config.get("targets") or {}
        if not isinstance(targets, dict):
            raise ConfigurationError(f"{source}: 'targets' must be a mapping")
        for key in targets:
            if key not in TARGET_KEYS:
                raise unknown_key(source, key, TARGET_KEYS, what="target", error=ConfigurationError)
        for key, value in targets.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigurationError(f"{source}: targets.{key} must be a number, got {value!r}")

    def run_experiments(self, experiment_names: list[str] | None = None) -> dict[str, Any]:
        """Run all (or the named) experiments in order; returns the results document."""
        names = list(experiment_names) if experiment_names else list(self.experiments)
        missing = [n for n in names if n not in self.experiments]
        if missing:
            raise ConfigurationError(f"{self.config_file}: no experiment(s) {', '.join(missing)} (available: {', '.join(self.experiments)})")
        for i, name in enumerate(names, 1):
            log.info("experiment %d/%d: %s", i, len(names), name)
            result = self.run_single_experiment(name, self.experiments[name])
            self.results.append(result)
            self.save_results()
            if result["status"] == "completed":
                log.info("%s completed: char accuracy %.4f, sequence accuracy %.4f, %.0fs", name,
                         result["best_val_char_accuracy"], result["best_val_seq_accuracy"], result["training_time"])
            else:
                log.error("%s failed: %s", name, result["error_message"])
        return self.document()

    def run_single_experiment(self, experiment_name: str, experiment_config: dict[str, Any]) -> dict[str, Any]:
        """Train one experiment; failures become a ``failed`` record instead of an exception."""
        start = time.time()
        config: TrainingConfig | None = None
        record: dict[str, Any] = {"experiment_name": experiment_name, "status": "failed", "training_time": 0.0,
                                  "best_val_char_accuracy": 0.0, "best_val_seq_accuracy": 0.0, "final_train_loss": None,
                                  "total_epochs": 0, "error_message": None}
        try:
            config = create_training_config(experiment_config, self.output_dir, experiment_name)
            config.experiment_name = slug(config.experiment_name)
            if self.num_threads is not None:
                config.num_threads = self.num_threads
            exp_dir = config.experiment_dir
            (exp_dir / "configs").mkdir(parents=True, exist_ok=True)

            atomic_write_text(exp_dir / "configs" / "experiment_config.yaml",
                              yaml.safe_dump({experiment_name: experiment_config}, sort_keys=False, allow_unicode=True))
            summary = train_from_config(config)
            if not summary["history"]:
                raise ExperimentFailedError(f"experiment {experiment_name!r} finished no epoch")
            record.update(
                status="completed", training_time=summary["training_time"],
                best_val_char_accuracy=summary["best_val_char_accuracy"], best_val_seq_accuracy=summary["best_val_seq_accuracy"],
                best_val_loss=summary["best_val_loss"], final_train_loss=summary["final_train_loss"],
                total_epochs=summary["total_epochs"], best_epoch=summary["best_epoch"], stopped_by=summary["stopped_by"],
                model_parameters=summary["model_parameters"], best_checkpoint=summary["best_checkpoint"],
                output_dir=str(exp_dir),
            )
            record["targets_met"] = self._targets_met(record)
        except Exception as e:  # recorded, and the next experiment still runs
            record["training_time"] = time.time() - start
            record["error_message"] = f"{type(e).__name__}: {e}" if not isinstance(e, ConfigurationError) else str(e)
            log.debug("experiment %s failed", experiment_name, exc_info=True)
        record["hyperparameters"] = _hyperparameters(config, experiment_config)
        return record

    def _targets_met(self, record: dict[str, Any]) -> dict[str, bool]:
        t = self.targets
        met = {}
        if "character_accuracy" in t:
            met["character_accuracy"] = record["best_val_char_accuracy"] >= t["character_accuracy"]
        if "sequence_accuracy" in t:
            met["sequence_accuracy"] = record["best_val_seq_accuracy"] >= t["sequence_accuracy"]
        if "training_time_per_epoch" in t and record["total_epochs"]:
            met["training_time_per_epoch"] = record["training_time"] / record["total_epochs"] <= t["training_time_per_epoch"]
        if "convergence_epochs" in t and record.get("best_epoch") is not None:
            met["convergence_epochs"] = record["best_epoch"] <= t["convergence_epochs"]
        return met

    def document(self) -> dict[str, Any]:
        completed = [r for r in self.results if r["status"] == "completed"]
        best = max(completed, key=lambda r: (r["best_val_char_accuracy"], r["best_val_seq_accuracy"]), default=None)
        return {
            "timestamp": self.timestamp,
            "config_file": str(self.config_file),
            "experiments_completed": len(completed),
            "experiments_failed": len(self.results) - len(completed),
            "targets": self.targets,
            "best_result": best,
            "all_results": self.results,
        }

    def save_results(self) -> str:
        """Write the results JSON atomically; returns its path."""
        atomic_write_json(self.results_file, self.document())
        return str(self.results_file)


def run_single_experiment(experiment_name: str, experiment_config: dict[str, Any], output_dir: str | Path = LAYOUT.khmer_runs) -> dict[str, Any]:
    """Run one experiment outside a tuner file (same record as :meth:`HyperparameterTuner.run_single_experiment`)."""
    tuner = HyperparameterTuner.__new__(HyperparameterTuner)
    tuner.config_file, tuner.config = Path("<dict>"), {"experiments": {experiment_name: experiment_config}}
    tuner.output_dir, tuner.results, tuner.timestamp = Path(output_dir), [], time.strftime("%Y%m%d_%H%M%S")
    return tuner.run_single_experiment(experiment_name, experiment_config)
