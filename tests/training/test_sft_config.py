"""TrainConfig: the project's fields plus every SFTConfig field, validation lines, precedence, the train CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from tests.helpers.programs import assert_one_line_error, run_cli
from gemma_ocr.training.config import TRAINER_DEFAULTS, TrainConfig, load_config, resolve_config
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.flags import ConfigParser
from tests.helpers.sft_fixtures import ROOT

REQUIRED_FIELDS = (
    "model_name input_data instruction learning_rate num_train_epochs lora_r lora_alpha lora_dropout max_seq_length "
    "load_in_4bit finetune_vision_layers finetune_language_layers finetune_attention_modules finetune_mlp_modules "
    "finetune_multimodal_projector warmup_ratio per_device_train_batch_size per_device_eval_batch_size "
    "gradient_accumulation_steps train_split val_split seed max_steps eval_steps save_steps logging_steps report_to "
    "wandb_project wandb_group run_name output_dir backend gradient_checkpointing resume_from_checkpoint"
).split()


def parse(*argv: str):
    parser = ConfigParser(TrainConfig, ignore_keys=TrainConfig.ignored_keys)
    config, _ = parser.parse_settings(list(argv))
    return config


def test_contract_fields_and_defaults():
    c = TrainConfig()
    for name in REQUIRED_FIELDS:
        assert hasattr(c, name), name
    assert c.model_name == "models/tiny-gemma3-reader" and c.train_mode == "lora"
    assert c.input_data == "data/input/ocr_non_test.json"
    assert c.instruction == "請給我 OCR 結果"
    assert c.max_seq_length == 8192
    assert (c.train_split, c.val_split) == ("train[:90%]", "train[90%:]")
    assert c.finetune_vision_layers is False and c.finetune_language_layers is True
    assert c.finetune_multimodal_projector is False and c.max_steps == -1
    # the project's trainer defaults (not SFTConfig's)
    assert (c.learning_rate, c.gradient_accumulation_steps, c.per_device_train_batch_size) == (2e-4, 4, 1)
    assert (c.optim, c.eval_strategy, c.eval_on_start, c.save_total_limit) == ("adamw_torch", "steps", True, 2)
    assert c.bf16 is None and c.fp16 is False  # bf16 decided per machine, never fp16
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_every_sft_config_field_is_a_key_and_a_flag():
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    assert names <= set(TrainConfig.field_names())
    parser = ConfigParser(TrainConfig)
    for name in names:
        assert f"--{name.replace('_', '-')}" in parser._option_string_actions, name
        assert f"--{name}" in parser._option_string_actions, name
    assert set(TRAINER_DEFAULTS) <= names  # every project default names a real trainer field


def test_precedence_defaults_file_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"learning_rate": 1e-3, "lora_r": 8, "adam_beta2": 0.98, "_comment": "ignored",
                               "search_space": {}}))
    c = parse("--config", str(cfg), "--lora-r", "32", "--lora-output-dir", "out/x", "--no-gradient-checkpointing",
              "--report-to", "wandb", "tensorboard", "--eval-steps", "0.25", "--resume", "--adam_beta2", "0.9")
    assert c.learning_rate == 1e-3  # file beats default
    assert c.lora_r == 32 and c.adam_beta2 == 0.9  # flag beats file, either spelling
    assert c.lora_alpha == TrainConfig().lora_alpha  # default kept
    assert c.output_dir == "out/x" and c.gradient_checkpointing is False
    assert c.report_to == ["wandb", "tensorboard"] and c.reporters == ["wandb", "tensorboard"]
    assert c.eval_steps == 0.25 and c.resume_from_checkpoint is True
    assert parse("--config", str(cfg)).lora_r == 8 and parse("--config", str(cfg)).adam_beta2 == 0.98
    assert resolve_config(cfg, {"lora_r": 4, "lora_alpha": None}).lora_r == 4  # the Python form


def test_yaml_config_and_switch_spellings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1e-4\nload_in_4bit: yes\nlr_scheduler_kwargs: {num_cycles: 2}\n")
    c = parse("--config", str(cfg))
    assert c.learning_rate == 1e-4 and c.load_in_4bit is True and c.lr_scheduler_kwargs == {"num_cycles": 2}
    assert parse("--load-in-4bit", "false").load_in_4bit is False
    assert parse("--config", str(cfg), "--no-load-in-4bit").load_in_4bit is False
    assert parse("--resume", "models/x/checkpoint-4").resume_from_checkpoint == "models/x/checkpoint-4"
    assert parse("--use-liger-kernel", "auto").use_liger_kernel == "auto"
    assert parse("--use-liger-kernel").use_liger_kernel is True
    assert parse("--save-total-limit", "none").save_total_limit is None


def test_unknown_key_names_the_closest():
    with pytest.raises(GemmaOcrError, match=r"unknown key 'learnig_rate'; did you mean 'learning_rate'\?"):
        TrainConfig.from_dict({"learnig_rate": 1e-4})


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"lora_r": "sixteen"}, r"field 'lora_r' must be an integer, got 'sixteen'$"),
        ({"lora_r": 16.5}, r"field 'lora_r' must be an integer, got 16.5$"),
        ({"load_in_4bit": "maybe"}, r"field 'load_in_4bit' must be true or false"),
        ({"learning_rate": [1]}, r"field 'learning_rate' must be a number"),
        ({"report_to": 3}, r"field 'report_to' must be a list of strings"),
        ({"learning_rate": 0}, r"field 'learning_rate' must be > 0"),
        ({"backend": "vllm"}, r"field 'backend' must be one of transformers, unsloth"),
        ({"report_to": ["mlflow"]}, r"field 'report_to' entries must be among"),
        ({"adam_beta2": "high"}, r"field 'adam_beta2' must be a number, got 'high'"),
        ({"save_strategy": "sometimes"}, r"field 'save_strategy' must be one of no, steps, epoch, best"),
        ({"lr_scheduler_kwargs": "{bad json"}, r"field 'lr_scheduler_kwargs' must be a JSON object"),
        ({"fp16": True}, r"field 'fp16' is refused: Gemma 3 overflows to NaN in float16"),
        ({"max_length": 512}, r"field 'max_length' is not used: .*max_seq_length"),
    ],
)
def test_wrong_types_and_values_are_one_line(data, pattern):
    with pytest.raises(GemmaOcrError, match=pattern) as err:
        TrainConfig.from_dict(data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["learning_rate", "weight_decay", "adam_beta2", "warmup_ratio", "lora_dropout",
                                  "num_train_epochs", "neftune_noise_alpha"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "NaN", "Infinity"])
def test_non_finite_floats_are_refused(name, value, tmp_path):
    with pytest.raises(GemmaOcrError, match=rf"^config: field '{name}' must be a finite number, got "):
        TrainConfig.from_dict({name: value})
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({name: value}))  # Python's json writes NaN/Infinity, and reads them back
    with pytest.raises(GemmaOcrError, match=rf"^{re.escape(str(cfg))}: field '{name}' must be a finite number"):
        resolve_config(cfg)
    with pytest.raises(GemmaOcrError, match=rf"^--{name.replace('_', '-')} must be a finite number"):
        parse(f"--{name}={value}")  # `=`: argparse would take -inf for a flag
    with pytest.raises(GemmaOcrError, match=rf"field '{name}' must be a finite number"):
        TrainConfig(**{name: value}).validate()  # a value set from Python is checked too


def test_int_accepted_for_float_and_integral_float_for_int():
    c = TrainConfig.from_dict({"num_train_epochs": 2, "lora_r": 16.0, "save_steps": 2.0})
    assert c.num_train_epochs == 2.0 and isinstance(c.lora_r, int) and isinstance(c.save_steps, int)


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
    assert c.model_name == "models/tiny-gemma3-reader" and c.load_in_4bit is False


def test_cli_print_config_and_bad_key_line(tmp_path):
    out = run_cli("sft_gemma.py", "--config", str(ROOT / "configs/hyperparm_configs/default.json"),
                  "--learning-rate", "3e-4", "--adam-beta2", "0.95", "--print-config", env={"OMP_NUM_THREADS": "1"})
    printed = json.loads(out.stdout)
    assert printed["learning_rate"] == 3e-4 and printed["lora_r"] == 16 and printed["adam_beta2"] == 0.95

    cfg = tmp_path / "typo.json"
    cfg.write_text(json.dumps({"lora_rank": 8}))
    proc = run_cli("sft_gemma.py", "--config", str(cfg), check=False, env={"OMP_NUM_THREADS": "1"})
    line = assert_one_line_error(proc)
    assert line == f"error: {cfg}: unknown key 'lora_rank'; did you mean 'lora_r'?"


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
        ({"warmup_steps": -3}, r"field 'warmup_steps' must be >= 0"),
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


def test_a_bad_value_is_named_where_it_came_from(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"max_steps": 0, "lora_r": 8}))
    with pytest.raises(GemmaOcrError, match=rf"^{re.escape(str(cfg))}: field 'max_steps' must be > 0"):
        parse("--config", str(cfg))
    assert parse("--config", str(cfg), "--max-steps", "5").max_steps == 5  # a flag may correct the file
    with pytest.raises(GemmaOcrError, match=r"^--max-steps must be > 0, or -1 .*got 0$"):
        parse("--max-steps", "0")
    with pytest.raises(GemmaOcrError, match=r"^--lora-output-dir is empty"):
        parse("--lora-output-dir", "")


def test_cli_bad_values_fail_before_the_model_loads(tmp_path):
    missing = str(tmp_path / "no-such-model")  # reaching the model (or the data) would fail differently
    common = ("--model-name", missing, "--input-data", str(tmp_path / "none.json"), "--lora-output-dir", str(tmp_path))
    proc = run_cli("sft_gemma.py", "--optim", "bogus", *common, check=False, env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc, "--optim must be one of", "got 'bogus'", "adamw_torch_fused")
    assert missing not in proc.stderr and not proc.stdout


@pytest.mark.parametrize(("argv", "line"), [
    (["--lerning-rate", "1e-3"], "unknown flag --lerning-rate; did you mean --learning-rate?"),
    (["--lr", "1e-3"], "unknown flag --lr"),  # no abbreviations
    (["--learning-rate", "nan"], "--learning-rate must be a finite number, got 'nan'"),  # refused up front
    (["--lora-r"], "--lora-r: expected one argument"),
    # a combination only the trainer refuses is one line at --print-config already
    (["--load-best-model-at-end", "--save-strategy", "epoch"], "training arguments: "),
])
def test_train_command_print_config_refuses(argv, line, monkeypatch, capsys):
    from gemma_ocr.commands.train import main

    monkeypatch.setattr("sys.argv", ["sft_gemma.py", *argv, "--print-config"])
    with pytest.raises(GemmaOcrError) as err:
        main()
    assert str(err.value).startswith(line) and "\n" not in str(err.value)
    assert not capsys.readouterr().out


def test_trainer_arguments_are_refused_before_the_model_loads(monkeypatch):
    import importlib

    tune_module = importlib.import_module("gemma_ocr.training.tune")  # the module, not the function of that name
    monkeypatch.setattr(tune_module, "load_model", lambda config: pytest.fail("the model was loaded"))
    config = TrainConfig(load_best_model_at_end=True, save_strategy="epoch", output_dir="unused")
    with pytest.raises(GemmaOcrError, match=r"^training arguments: .*strategy") as err:
        tune_module.build_trainer(config, train_ds=[], val_ds=[])
    assert "\n" not in str(err.value)


def test_sft_arguments_pass_every_trainer_field_and_resolve_the_automatic_ones():
    from gemma_ocr.training.tune import sft_arguments

    config = TrainConfig.from_dict({"adam_beta2": 0.95, "neftune_noise_alpha": 5, "save_strategy": "epoch",
                                    "lr_scheduler_kwargs": {"num_cycles": 2}, "warmup_ratio": 0.1,
                                    "output_dir": "models/x", "data_seed": 7})
    args = sft_arguments(config, ["tensorboard"], has_eval=True, resuming=False)
    assert (args.adam_beta2, args.neftune_noise_alpha, args.save_strategy) == (0.95, 5.0, "epoch")
    assert args.lr_scheduler_kwargs == {"num_cycles": 2} and args.warmup_steps == 0.1
    assert args.run_name == "x" and args.data_seed == 7 and args.bf16 is False and args.fp16 is False
    assert args.eval_on_start is True and args.eval_steps == 50
    assert args.report_to == ["tensorboard"] and args.use_liger_kernel is False
    assert args.remove_unused_columns is False and args.label_names == ["labels"]
    no_eval = sft_arguments(config.replace(warmup_steps=7), [], has_eval=False, resuming=False)
    assert no_eval.eval_strategy == "no" and no_eval.eval_on_start is False and no_eval.warmup_steps == 7
    resumed = sft_arguments(config, [], has_eval=True, resuming=True)
    assert resumed.eval_on_start is False and resumed.eval_strategy == "steps"


def test_save_steps_follows_eval_steps_where_the_best_checkpoint_is_kept_by_a_metric(tmp_path, monkeypatch, capsys):
    from gemma_ocr.commands.train import main
    from gemma_ocr.training.tune import sft_arguments

    default = str(ROOT / "configs/hyperparm_configs/default.json")
    config = parse("--config", default, "--eval-steps", "2")  # the file keeps the best checkpoint by eval_cer
    assert config.save_steps is None and config.checkpoint_steps() == 2
    args = sft_arguments(config, [], has_eval=True, resuming=False)
    assert (args.eval_steps, args.save_steps, args.load_best_model_at_end) == (2, 2, True)
    assert parse("--config", default).checkpoint_steps() == 25  # the file's eval_steps
    assert parse("--config", default, "--eval-steps", "0.1").checkpoint_steps() == 0.1
    # the best checkpoint by a metric, set by flags only; save_steps given and compatible is kept
    assert parse("--load-best-model-at-end", "--eval-steps", "3").checkpoint_steps() == 3
    assert parse("--metric-for-best-model", "eval_loss", "--eval-steps", "2", "--save-steps", "6").checkpoint_steps() == 6
    # no best checkpoint, or saves not at evaluations: save_steps' own default, whatever eval_steps is
    assert parse("--eval-steps", "2").checkpoint_steps() == 50
    assert sft_arguments(parse("--eval-steps", "2"), [], has_eval=True, resuming=False).save_steps == 50
    assert parse("--config", default, "--eval-steps", "2", "--save-strategy", "best").checkpoint_steps() == 50

    monkeypatch.setattr("sys.argv", ["sft_gemma.py", "--config", default, "--eval-steps", "2", "--print-config"])
    main()  # transformers' check passes: the checkpoints are saved at every evaluation
    assert json.loads(capsys.readouterr().out)["eval_steps"] == 2


@pytest.mark.parametrize(("file", "flags", "saved", "where"), [
    ({"save_steps": 25}, ["--eval-steps", "2"], 25, "{file}: field 'save_steps' 25 is not a multiple of eval_steps 2"),
    ({}, ["--eval-steps", "2", "--save-steps", "25"], 25, "--save-steps 25 is not a multiple of eval_steps 2"),
    ({"save_steps": 0.5}, ["--eval-steps", "10"], 0.5,
     "{file}: field 'save_steps' 0.5 is not a multiple of eval_steps 10 (one is a fraction of the run, the other steps)"),
])
def test_save_steps_set_against_eval_steps_is_one_line_naming_both(file, flags, saved, where, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"metric_for_best_model": "eval_cer", **file}))
    with pytest.raises(GemmaOcrError) as err:
        parse("--config", str(cfg), *flags)
    line = str(err.value)
    assert line.startswith(where.format(file=cfg)) and "\n" not in line, line
    assert line.endswith("set save_steps to a multiple of eval_steps, or leave save_steps out and it follows "
                         "eval_steps"), line
    # without a best checkpoint by a metric, any save_steps goes with any eval_steps
    cfg.write_text(json.dumps(file))
    assert parse("--config", str(cfg), *flags).checkpoint_steps() == saved
