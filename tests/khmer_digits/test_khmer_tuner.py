"""The experiment tuner end to end: results JSON, per-experiment folders, failures recorded, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.helpers.khmer_helpers import ROOT, run_program, tiny_dataset

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.errors import ConfigurationError
from gemma_ocr.khmer_digits.tuner import HyperparameterTuner, create_training_config

TUNER = str(ROOT / "core" / "khmer_digits" / "phase3_hyperparameter_tuning.py")


def _tiny_experiment(meta: Path, **training) -> dict:
    return {
        "model": {"name": "lite"},
        "data": {"metadata_path": str(meta), "max_train_samples": 32, "generate_if_missing": False},
        "training": {"batch_size": 16, "num_epochs": 1, "learning_rate": 0.002, "num_threads": 1, **training},
        "optimizer": {"type": "adamw"},
        "scheduler": {"type": "cosine", "warmup_epochs": 0.5},
        "early_stopping": {"patience": 2, "monitor": "val_char_accuracy", "mode": "max"},
    }


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("khmer_tuner"), n_train=32, n_val=8)


def test_shipped_experiments_parse():
    tuner = HyperparameterTuner(ROOT / "configs" / "khmer_digits" / "phase3_simple_configs.yaml")
    assert {"conservative_small", "baseline_optimized", "high_learning_rate"} <= set(tuner.experiments)
    small = create_training_config(tuner.experiments["conservative_small"], name="conservative_small")
    assert (small.model_name, small.batch_size, small.scheduler_type, small.label_smoothing) == ("small", 32, "plateau", 0.05)
    base = create_training_config(tuner.experiments["baseline_optimized"], name="baseline_optimized")
    assert (base.model_name, base.optimizer_type, base.scheduler_type, base.warmup_epochs, base.min_lr) == ("medium", "adamw", "cosine", 3, 1e-6)
    high = create_training_config(tuner.experiments["high_learning_rate"], name="high_learning_rate")
    assert (high.batch_size, high.learning_rate, high.step_size) == (96, 0.003, 8)


@pytest.mark.slow
def test_tuner_runs_and_records_a_broken_experiment(meta, tmp_path):
    config = {
        "experiments": {
            "broken": {**_tiny_experiment(meta), "training": {"lerning_rate": 0.1}},
            "tiny": _tiny_experiment(meta),
            "mismatch": {**_tiny_experiment(meta), "model": {"name": "small"}, "training": {"loss_type": "ctc"}},
        },
        "targets": {"character_accuracy": 0.85, "sequence_accuracy": 0.7},
    }
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    results = tmp_path / "results.json"
    proc = run_program(TUNER, "--config", str(cfg), "--output-dir", str(tmp_path / "out"), "--results-file", str(results))
    assert proc.returncode == 1, proc.stderr  # some experiment failed
    doc = json.loads(results.read_text())
    by_name = {r["experiment_name"]: r for r in doc["all_results"]}
    assert [r["experiment_name"] for r in doc["all_results"]] == ["broken", "tiny", "mismatch"]
    assert by_name["broken"]["status"] == "failed" and "lerning_rate" in by_name["broken"]["error_message"]
    assert by_name["mismatch"]["status"] == "failed" and "loss_type" in by_name["mismatch"]["error_message"]
    tiny = by_name["tiny"]
    assert tiny["status"] == "completed" and tiny["total_epochs"] == 1 and tiny["error_message"] is None
    assert tiny["hyperparameters"] == {"model_name": "lite", "batch_size": 16, "learning_rate": 0.002, "weight_decay": 0.0001,
                                       "loss_type": "ctc", "scheduler_type": "cosine", "optimizer_type": "adamw"}
    assert doc["experiments_completed"] == 1 and doc["best_result"]["experiment_name"] == "tiny"
    assert set(tiny["targets_met"]) == {"character_accuracy", "sequence_accuracy"}
    folder = tmp_path / "out" / "tiny"
    for sub in ("checkpoints", "logs", "tensorboard", "configs"):
        assert any((folder / sub).iterdir()), sub
    assert (folder / "checkpoints" / "best_model.pt").is_file()
    assert "Epoch 1 Results" in next((folder / "logs").glob("training_*.log")).read_text()
    assert "tiny" in proc.stdout and "error: " in proc.stdout


def test_bad_yaml_and_unknown_names_are_one_line(tmp_path, meta):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments:\n  a: [1, 2\n")
    proc = run_program(TUNER, "--config", str(bad))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "malformed YAML" in proc.stderr and "Traceback" not in proc.stderr

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"experiments": {"tiny": _tiny_experiment(meta)}}))
    proc = run_program(TUNER, "--config", str(good), "--experiments", "nope")
    assert proc.returncode == 2 and "no experiment(s) nope" in proc.stderr and "tiny" in proc.stderr

    with pytest.raises(ConfigurationError, match="unknown top-level"):
        HyperparameterTuner.validate_config(None, {"experiments": {"a": {}}, "extra": 1})
    with pytest.raises(ConfigurationError, match="unknown section"):
        create_training_config({"modle": {}}, name="x")
    with pytest.raises(GemmaOcrError, match="not found"):
        HyperparameterTuner(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_the_same_command_gives_the_same_figures_on_one_thread_by_default(meta, tmp_path):
    """Training is deterministic for a fixed seed: the same program run twice gives identical figures and weights."""
    import torch

    experiment = _tiny_experiment(meta, num_epochs=2)
    del experiment["training"]["num_threads"]  # the default: one thread
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"experiments": {"tiny": experiment}}, sort_keys=False))
    figures, weights = [], []
    for run in ("a", "b"):
        results = tmp_path / f"{run}.json"
        proc = run_program(TUNER, "--config", str(cfg), "--output-dir", str(tmp_path / run), "--results-file", str(results))
        assert proc.returncode == 0, proc.stderr
        r = json.loads(results.read_text())["all_results"][0]
        figures.append((r["best_val_char_accuracy"], r["best_val_seq_accuracy"], r["best_val_loss"], r["final_train_loss"]))
        weights.append(torch.load(r["best_checkpoint"], weights_only=True)["model_state"])
        saved = yaml.safe_load((tmp_path / run / "tiny" / "configs" / "training_config.yaml").read_text())
        assert saved["num_threads"] == 1
    assert figures[0] == figures[1]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
