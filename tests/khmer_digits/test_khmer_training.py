"""Training utilities (config, checkpoints, early stopping, schedulers) and the backend round trip."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tests.helpers.eval_fixtures import huge_png
from tests.helpers.khmer_helpers import tiny_dataset
from torch import nn

from gemma_ocr.data.records import load_records
from tests.helpers.programs import assert_one_line_error, run_cli
from gemma_ocr.khmer_digits.backend import evaluate_ocr_file, export_ocr_json, predict, train_trial, trial_config
from gemma_ocr.errors import ConfigurationError, DataLoaderError
from gemma_ocr.khmer_digits.metrics import OCRMetrics
from gemma_ocr.khmer_digits.trainer import create_optimizer, create_scheduler
from gemma_ocr.khmer_digits.utils import CheckpointManager, EarlyStopping, TrainingConfig


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("khmer_train"), n_train=48, n_val=16)


def test_training_config_yaml_round_trip_and_errors(tmp_path):
    config = TrainingConfig(model_name="ctc", loss_type="ctc", learning_rate=3e-4, optimizer_betas=[0.8, 0.99])
    path = config.save_yaml(tmp_path / "c.yaml")
    again = TrainingConfig.from_yaml(path)
    assert again == config
    assert TrainingConfig.from_dict({"min_lr": "1e-6"}).min_lr == 1e-6  # YAML leaves 1e-6 a string
    with pytest.raises(ConfigurationError, match="did you mean 'learning_rate'"):
        TrainingConfig.from_dict({"lerning_rate": 0.1})
    with pytest.raises(ConfigurationError, match="field 'scheduler_type' must be one of cosine, .*got 'linear'"):
        TrainingConfig.from_dict({"scheduler_type": "linear"})
    with pytest.raises(ConfigurationError, match="batch_size"):
        TrainingConfig.from_dict({"batch_size": 0})


@pytest.mark.parametrize(("data", "message"), [
    ({"max_train_samples": "12"}, None),  # int | None from text
    ({"max_train_samples": None}, None),
    ({"focal_alpha": [0.5, "0.25"]}, None),  # float | list[float] | None
    ({"max_train_samples": 1.5}, "field 'max_train_samples' must be an integer or null, got 1.5"),
    ({"learning_rate": "NaN"}, "field 'learning_rate' must be a finite number, got 'NaN'"),
    ({"learning_rate": float("inf")}, "field 'learning_rate' must be a finite number, got inf"),
    ({"augmentation": "maybe"}, "field 'augmentation' must be true or false, got 'maybe'"),
    ({"optimizer_betas": [0.9, "x"]}, "field 'optimizer_betas' item 2 must be a number, got 'x'"),
])
def test_training_config_types_go_through_the_settings_layer(data, message):
    """The Khmer config is checked by the one coercion of gemma_ocr.settings (types, not annotation strings)."""
    if message is None:
        config = TrainingConfig.from_dict(data)
        assert config.max_train_samples in (None, 12) and config.focal_alpha in (None, [0.5, 0.25])
        return
    with pytest.raises(ConfigurationError) as err:
        TrainingConfig.from_dict(data, source="exp.yaml")
    assert str(err.value) == f"exp.yaml: {message}"


def test_checkpoint_manager_keeps_n_and_the_best(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep_n=2)
    scores = [0.1, 0.5, 0.3, 0.2, 0.4]
    best = None
    for epoch, score in enumerate(scores, 1):
        is_best = best is None or score > best
        best = score if is_best else best
        manager.save({"model_state": {"w": torch.tensor([float(epoch)])}}, epoch, {"val_char_accuracy": score}, is_best=is_best)
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt"))
    assert files == ["best_model.pt", "checkpoint_epoch_004.pt", "checkpoint_epoch_005.pt"]
    state = CheckpointManager.load(manager.best_path)
    assert state["epoch"] == 2 and state["model_state"]["w"].item() == 2.0
    index = json.loads((tmp_path / "ckpt" / "checkpoints.json").read_text())
    assert [k["epoch"] for k in index["kept"]] == [4, 5] and index["best"]["epoch"] == 2
    assert manager.latest().name == "checkpoint_epoch_005.pt"
    with pytest.raises(DataLoaderError, match="checkpoint not found"):
        CheckpointManager.load(tmp_path / "nope.pt")


def test_early_stopping_max_and_min_with_restore():
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2, min_delta=0.01, mode="max")
    values = [0.5, 0.7, 0.705, 0.69]  # 0.705 is not an improvement by min_delta
    stops = []
    for epoch, v in enumerate(values, 1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        stops.append(stopper(v, model, epoch))
    assert stops == [False, False, False, True]
    assert stopper.best == 0.7 and stopper.best_epoch == 2
    assert stopper.restore(model) and model.weight.eq(2.0).all()

    low = EarlyStopping(patience=1, mode="min")
    assert low(1.0) is False and low(0.5) is False and low(0.6) is True
    assert low.best == 0.5
    with pytest.raises(ConfigurationError):
        EarlyStopping(mode="up")


def test_optimizers_and_schedulers():
    model = nn.Linear(4, 2)
    cfg = TrainingConfig(optimizer_type="adamw", scheduler_type="cosine", num_epochs=4, warmup_epochs=1, learning_rate=1.0, min_lr=0.0)
    opt = create_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.0  # bias not decayed
    sched = create_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9]  # warmup
    assert max(lrs) == pytest.approx(1.0, abs=0.02) and lrs[-1] < 0.01  # cosine to min_lr
    step = create_scheduler(create_optimizer(model, TrainingConfig(scheduler_type="steplr", step_size=2, gamma=0.5)),
                            TrainingConfig(scheduler_type="steplr", step_size=2, gamma=0.5))
    assert isinstance(step, torch.optim.lr_scheduler.StepLR)
    plateau = create_scheduler(opt, TrainingConfig(scheduler_type="plateau"))
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)


@pytest.mark.slow
def test_train_trial_predict_round_trip(meta, tmp_path):
    reports = []
    result = train_trial({"data": str(meta), "epochs": 2, "batch_size": 16, "num_threads": 1},
                         tmp_path / "trial", report=lambda epoch, value: reports.append((epoch, value)) or False)
    assert [e for e, _ in reports] == [1, 2] and result["epochs"] == 2 and not result["pruned"]
    assert result["checkpoint"].endswith("best_model.pt")
    for key in ("val_loss", "char_accuracy", "seq_accuracy", "edit_distance"):
        assert isinstance(result[key], float)
    best_value = max(v for _, v in reports)
    assert result["char_accuracy"] == pytest.approx(best_value)

    # predicting the val images from the saved checkpoint reproduces the trainer's figures
    test_json = export_ocr_json(meta, tmp_path / "val.json", split="val")
    records = load_records(test_json)
    predictions = predict(result["checkpoint"], [r.image_path for r in records])
    assert len(predictions) == len(records) and all(set(p) <= set("០១២៣៤៥៦៧៨៩") for p in predictions)
    metrics = OCRMetrics()
    metrics.update(predictions, [r.text for r in records])
    assert metrics.compute()["char_accuracy"] == pytest.approx(result["char_accuracy"])

    doc = evaluate_ocr_file(result["checkpoint"], test_json)
    assert doc["total_samples"] == len(records) and doc["backend"] == "khmer_digits"
    assert 0.0 <= doc["overall_f1"] <= 1.0 and doc["overall_cer"] >= 0.0
    assert [s["prediction"] for s in doc["samples"]] == predictions

    # a missing image is recorded as an error sample, not scored
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"image_path": "nowhere.png", "ocr_text": "១"},
                                  {"image_path": records[0].image_path, "ocr_text": records[0].text}]))
    doc = evaluate_ocr_file(result["checkpoint"], broken)
    assert [s["status"] for s in doc["samples"]][0] == "error" and doc["status_counts"]["error"] == 1
    assert doc["samples"][1]["prediction"] == predictions[0]
    bomb = huge_png(tmp_path / "huge.png")  # 20000 x 20000: Pillow's decompression-bomb guard
    broken.write_text(json.dumps([{"image_path": str(bomb), "ocr_text": "១"}]))
    doc = evaluate_ocr_file(result["checkpoint"], broken)
    assert doc["samples"][0]["status"] == "error" and "huge.png" in doc["samples"][0]["error"]

    # the evaluate program scores the CNN the same way, --top-k included
    out = tmp_path / "cnn_results.json"
    proc = run_cli("evaluate.py", "--backend", "khmer-cnn", "--checkpoint", result["checkpoint"],
                   "--data-file", str(test_json), "--output-file", str(out), "--top-k", "5")
    cli_doc = json.loads(out.read_text())
    assert cli_doc["total_samples"] == 5 and cli_doc["dataset_samples"] == len(records)
    assert [s["prediction"] for s in cli_doc["samples"]] == predictions[:5]
    assert "CER micro" in proc.stdout and f"first 5 of {len(records)}" in proc.stdout
    proc = run_cli("evaluate.py", "--backend", "khmer-cnn", "--checkpoint", result["checkpoint"],
                   "--data-file", str(test_json), "--output-file", str(out), "--top-k", "3", check=False)
    assert_one_line_error(proc, "holds 2 samples beyond the first 3", "--top-k 5")  # a rerun never shrinks the file
    assert json.loads(out.read_text())["total_samples"] == 5
    proc = run_cli("evaluate.py", "--backend", "khmer-cnn", "--data-file", str(test_json), check=False)
    assert_one_line_error(proc, "--checkpoint")

    # transcribe.py with the CNN: the same predictions, one row per image
    out = tmp_path / "cnn.jsonl"
    proc = run_cli("transcribe.py", str(test_json), "--backend", "khmer-cnn", "--checkpoint", result["checkpoint"],
                   "--output-file", str(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == predictions and {r["model"] for r in rows} == {"best_model"}
    assert f"images: {len(records)}" in proc.stdout


@pytest.mark.slow
def test_train_trial_pruned_by_report(meta, tmp_path):
    result = train_trial({"data": str(meta), "epochs": 3, "batch_size": 16, "max_train_samples": 16, "num_threads": 1},
                         tmp_path / "pruned", report=lambda epoch, value: True)
    assert result["pruned"] and result["epochs"] == 1


def test_a_checkpoint_holding_python_objects_is_refused_unread(tmp_path):
    """A crafted --checkpoint would run code when unpickled: it is refused before any of it runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "best_model.pt"
    torch.save({"model_state": {}, "model_config": {"preset": "lite"}, "extra": Payload()}, evil)
    with pytest.raises(DataLoaderError, match="not a Khmer-digits checkpoint: it holds Python objects"):
        CheckpointManager.load(evil)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"image_path": "a.png", "ocr_text": "១"}]))
    for program in ("evaluate.py", "transcribe.py"):
        args = ["--data-file", str(data)] if program == "evaluate.py" else [str(data)]
        proc = run_cli(program, "--backend", "khmer-cnn", "--checkpoint", str(evil), *args,
                       "--output-file", str(tmp_path / ("r.json" if program == "evaluate.py" else "t.jsonl")), check=False)
        assert_one_line_error(proc, "holds Python objects beyond tensors and plain values", "refused")
    assert not marker.exists()


def test_default_recipe_trains_on_one_thread(tmp_path):
    assert TrainingConfig().num_threads == 1 and trial_config({}, tmp_path / "t").num_threads == 1


def test_train_trial_rejects_unknown_parameters(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown hyperparameter"):
        train_trial({"lora_rank": 8}, tmp_path)
