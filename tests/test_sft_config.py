"""TrainConfig: validation messages, precedence defaults < file < flags, and the generated CLI flags."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, run_cli
from gemma_ocr.config import TrainConfig, load_config, resolve_config
from gemma_ocr.config_cli import add_train_config_flags, flag_overrides
from gemma_ocr.errors import GemmaOcrError
from sft_fixtures import ROOT, sft_env

REQUIRED_FIELDS = (
    "model_name input_data instruction learning_rate num_train_epochs lora_r lora_alpha lora_dropout max_seq_length "
    "load_in_4bit finetune_vision_layers finetune_language_layers finetune_attention_modules finetune_mlp_modules "
    "finetune_multimodal_projector warmup_ratio per_device_train_batch_size per_device_eval_batch_size "
    "gradient_accumulation_steps train_split val_split seed max_steps eval_steps save_steps logging_steps report_to "
    "wandb_project wandb_group run_name output_dir backend gradient_checkpointing resume_from_checkpoint"
).split()


def test_contract_fields_and_defaults():
    c = TrainConfig()
    for name in REQUIRED_FIELDS:
        assert hasattr(c, name), name
    assert c.model_name == "models/tiny-gemma3"
    assert c.input_data == "data/input/ocr_non_test.json"
    assert c.instruction == "請給我 OCR 結果"
    assert c.max_seq_length == 8192
    assert (c.train_split, c.val_split) == ("train[:90%]", "train[90%:]")
    assert c.finetune_vision_layers is False and c.finetune_language_layers is True
    assert c.finetune_multimodal_projector is False and c.max_steps == -1
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_precedence_defaults_file_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"learning_rate": 1e-3, "lora_r": 8, "_comment": "ignored", "search_space": {}}))
    parser = argparse.ArgumentParser()
    add_train_config_flags(parser)
    args = parser.parse_args(["--lora-r", "32", "--lora-output-dir", "out/x", "--no-gradient-checkpointing",
                              "--report-to", "wandb", "tensorboard", "--eval-steps", "0.25", "--resume"])
    c = resolve_config(cfg, flag_overrides(args))
    assert c.learning_rate == 1e-3  # file beats default
    assert c.lora_r == 32  # flag beats file
    assert c.lora_alpha == TrainConfig().lora_alpha  # default kept
    assert c.output_dir == "out/x" and c.gradient_checkpointing is False
    assert c.report_to == ["wandb", "tensorboard"] and c.reporters == ["wandb", "tensorboard"]
    assert c.eval_steps == 0.25 and c.resume_from_checkpoint is True
    assert resolve_config(cfg).lora_r == 8


def test_unknown_key_names_the_closest():
    with pytest.raises(GemmaOcrError, match=r"unknown key 'learnig_rate'; did you mean 'learning_rate'\?"):
        TrainConfig.from_dict({"learnig_rate": 1e-4})


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"lora_r": "16"}, r"field 'lora_r' must be integer, got str"),
        ({"load_in_4bit": "yes"}, r"field 'load_in_4bit' must be true/false"),
        ({"learning_rate": [1]}, r"field 'learning_rate' must be number"),
        ({"report_to": 3}, r"field 'report_to' must be list of string"),
        ({"learning_rate": 0}, r"field 'learning_rate' must be > 0"),
        ({"backend": "vllm"}, r"field 'backend' must be one of transformers, unsloth"),
        ({"report_to": ["mlflow"]}, r"field 'report_to' entries must be among"),
    ],
)
def test_wrong_types_and_values_are_one_line(data, pattern):
    with pytest.raises(GemmaOcrError, match=pattern) as err:
        TrainConfig.from_dict(data)
    assert "\n" not in str(err.value)


def test_int_accepted_for_float_and_integral_float_for_int():
    c = TrainConfig.from_dict({"num_train_epochs": 2, "lora_r": 16.0})
    assert c.num_train_epochs == 2.0 and isinstance(c.lora_r, int)


def test_load_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GemmaOcrError, match="malformed JSON"):
        load_config(bad)
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(GemmaOcrError, match="must hold an object"):
        load_config(lst)
    with pytest.raises(GemmaOcrError, match="not found"):
        load_config(tmp_path / "missing.json")


def test_default_config_file_is_valid():
    c = resolve_config(ROOT / "configs/hyperparm_configs/default.json")
    assert c.model_name == "models/tiny-gemma3" and c.load_in_4bit is False


def test_cli_print_config_and_bad_key_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "core/sft_gemma.py"), "--config",
           str(ROOT / "configs/hyperparm_configs/default.json"), "--learning-rate", "3e-4", "--print-config"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=sft_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["learning_rate"] == 3e-4 and printed["lora_r"] == 16

    cfg = tmp_path / "typo.json"
    cfg.write_text(json.dumps({"lora_rank": 8}))
    out = subprocess.run([sys.executable, str(ROOT / "core/sft_gemma.py"), "--config", str(cfg)],
                         capture_output=True, text=True, env=sft_env(), timeout=120)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {cfg}: unknown key 'lora_rank'; did you mean 'lora_r'?"]


@pytest.mark.parametrize(
    ("field", "enum_module", "enum_name"),
    [("optim", "transformers.training_args", "OptimizerNames"),
     ("lr_scheduler_type", "transformers.trainer_utils", "SchedulerType")],
)
def test_transformers_choices_are_checked_up_front(field, enum_module, enum_name, tmp_path):
    import importlib

    valid = [m.value for m in getattr(importlib.import_module(enum_module), enum_name)]
    with pytest.raises(GemmaOcrError) as err:
        TrainConfig.from_dict({field: "bogus"})
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"config: field {field!r} must be one of ")
    assert line.endswith("got 'bogus'") and all(v in line for v in valid)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({field: "bogus"}))
    with pytest.raises(GemmaOcrError, match=rf"^{re.escape(str(cfg))}: field '{field}' must be one of"):
        resolve_config(cfg)
    assert getattr(TrainConfig.from_dict({field: valid[1]}), field) == valid[1]


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"max_steps": 0}, r"field 'max_steps' must be > 0, or -1 to train for num_train_epochs, got 0$"),
        ({"max_steps": -2}, r"field 'max_steps' must be > 0, or -1 .*got -2$"),
        ({"num_train_epochs": 0}, r"field 'num_train_epochs' must be > 0"),
        ({"num_train_epochs": -1, "max_steps": 5}, r"field 'num_train_epochs' must be > 0"),
        ({"gradient_accumulation_steps": 0}, r"field 'gradient_accumulation_steps' must be >= 1, got 0"),
        ({"lora_alpha": -4}, r"field 'lora_alpha' must be >= 1, got -4"),
        ({"save_total_limit": 0}, r"field 'save_total_limit' must be >= 1 \(or null to keep every checkpoint\), got 0"),
        ({"max_train_samples": 0}, r"field 'max_train_samples' must be >= 1 \(or null to use them all\), got 0"),
        ({"max_eval_samples": -1}, r"field 'max_eval_samples' must be >= 1"),
        ({"save_steps": 0}, r"field 'save_steps' must be a whole number of steps >= 1 or a fraction"),
        ({"eval_steps": 1.5}, r"field 'eval_steps' must be a whole number .*got 1.5$"),
        ({"logging_steps": -0.5}, r"field 'logging_steps' must be a whole number"),
        ({"seed": -1}, r"field 'seed' must be in \[0, 4294967295\], got -1"),
        ({"weight_decay": -0.1}, r"field 'weight_decay' must be >= 0"),
        ({"max_grad_norm": -1}, r"field 'max_grad_norm' must be >= 0"),
        ({"lr_scheduler_type": "reduce_lr_on_plateau", "val_split": ""},
         r"field 'lr_scheduler_type' 'reduce_lr_on_plateau' needs evaluation: set val_split"),
    ],
)
def test_counts_and_ranges_are_one_line(data, pattern):
    with pytest.raises(GemmaOcrError, match=pattern) as err:
        TrainConfig.from_dict(data)
    assert "\n" not in str(err.value)


def test_meaningful_counts_are_accepted():
    c = TrainConfig.from_dict({"max_steps": 5, "num_train_epochs": 0, "eval_steps": 0.25, "save_steps": 2.0,
                               "save_total_limit": None, "max_grad_norm": 0, "seed": 0, "max_train_samples": 1})
    assert c.max_steps == 5 and c.save_steps == 2 and isinstance(c.save_steps, int)
    assert TrainConfig.from_dict({"max_steps": -1}).max_steps == -1  # -1: train for num_train_epochs
    assert TrainConfig.from_dict({"lr_scheduler_type": "reduce_lr_on_plateau"}).val_split


def test_cli_bad_choices_fail_before_the_model_loads(tmp_path):
    missing = str(tmp_path / "no-such-model")  # reaching the model (or the data) would fail differently
    common = ("--model-name", missing, "--input-data", str(tmp_path / "none.json"), "--lora-output-dir", str(tmp_path))
    proc = run_cli("sft_gemma.py", "--optim", "bogus", *common, check=False, env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc, "field 'optim'", "got 'bogus'", "adamw_torch_fused")
    assert missing not in proc.stderr and not proc.stdout

    cfg = tmp_path / "steps.json"
    cfg.write_text(json.dumps({"max_steps": 0}))
    proc = run_cli("sft_gemma.py", "--config", str(cfg), *common, check=False)
    assert_one_line_error(proc, str(cfg), "field 'max_steps'", "got 0")

    proc = run_cli("sft_gemma.py", "--lr", "1e-3", "--print-config", check=False)  # no abbreviations
    assert proc.returncode == 2 and "unrecognized arguments: --lr 1e-3" in proc.stderr and not proc.stdout


def test_trainer_arguments_are_refused_before_the_model_loads(monkeypatch):
    import importlib

    tune_module = importlib.import_module("gemma_ocr.training.tune")  # the module, not the function of that name
    monkeypatch.setattr(tune_module, "load_model", lambda config: pytest.fail("the model was loaded"))
    config = TrainConfig(optim="bogus", output_dir="unused")  # built without validation
    with pytest.raises(GemmaOcrError, match=r"^training arguments: bogus is not a valid OptimizerNames") as err:
        tune_module.build_trainer(config, train_ds=[])
    assert "\n" not in str(err.value)
