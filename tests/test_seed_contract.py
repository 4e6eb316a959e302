"""The seed's contract, walked: every flag and config key of the seed documents and the shipped configs still works.

The flags and keys below are copied from the seed documentation of the core suite (usage examples,
"Configuration Parameters", "Command-line Arguments", troubleshooting) and of the Khmer-digits tuner;
the shipped configs are read from configs/.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers.programs import REPO
from gemma_ocr.training.config import TrainConfig, resolve_config
from gemma_ocr.flags import ConfigParser

CONFIGS = REPO / "configs" / "hyperparm_configs"

# sft_gemma.py: flag -> (value given, field, value expected)
TRAIN_FLAGS = {
    "--lora-output-dir": ("models/gemma-ocr", "output_dir", "models/gemma-ocr"),
    "--learning-rate": ("2e-5", "learning_rate", 2e-5),
    "--num-train-epochs": ("5", "num_train_epochs", 5.0),
    "--lora-r": ("32", "lora_r", 32),
    "--lora-alpha": ("32", "lora_alpha", 32),
    "--load-in-4bit": (None, "load_in_4bit", True),
    "--per-device-train-batch-size": ("1", "per_device_train_batch_size", 1),
    "--gradient-accumulation-steps": ("8", "gradient_accumulation_steps", 8),
}
# sft_gemma.py "Configuration Parameters" and the search config format's fixed keys: key -> a value to set
TRAIN_KEYS = {
    "model_name": "/models/gemma-3-12b-it", "input_data": "data/input/ocr_non_test.json", "instruction": "請給我 OCR 結果",
    "learning_rate": 2e-4, "num_train_epochs": 3, "lora_r": 16, "lora_alpha": 16, "max_seq_length": 8192,
    "load_in_4bit": True, "finetune_vision_layers": True, "finetune_language_layers": True,
    "train_split": "train[:90%]", "val_split": "train[90%:]", "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 4, "warmup_ratio": 0.1,
}
EVALUATE_FLAGS = {
    "--vllm-url": ("http://192.168.1.78:3472/v1/chat/completions", "urls", ["http://192.168.1.78:3472/v1/chat/completions"]),
    "--data-file": ("data/input/ocr_test.json", "data_file", "data/input/ocr_test.json"),
    "--output-file": ("results/gemma_evaluation.json", "output_file", "results/gemma_evaluation.json"),
    "--top-k": ("None", "top_k", None),
    "--workers": ("8", "workers", 8),
    "--model-name": ("gemma-12b", "model_name", "gemma-12b"),
    "--save-interval": ("50", "save_interval", 50),
}
OTHER_FLAGS = {  # programs whose seed flags are checked in their --help
    "hyperparameter_search.py": ["--study-name", "--search-mode", "--n-trials", "--timeout", "--resume", "--config",
                                 "--storage", "--model-name", "--input-data", "--instruction", "--base-output-dir"],
    "analyze_hyperparam_results.py": ["--study-name", "--output-dir", "--compare"],
    "gemma_adapter_merge.py": ["--lora_dir", "--output_dir"],
    "count_score.py": ["--input", "--output"],
    "khmer_digits/phase3_hyperparameter_tuning.py": ["--experiments", "--config"],
}


@pytest.mark.parametrize("flag", TRAIN_FLAGS)
def test_train_flags(flag):
    given, name, expected = TRAIN_FLAGS[flag]
    config, _ = ConfigParser(TrainConfig).parse_settings([flag] if given is None else [flag, given])
    assert getattr(config, name) == expected


def test_train_flags_together_with_the_default_config():
    argv = ["--config", str(CONFIGS / "default.json")]
    for flag, (given, _, _) in TRAIN_FLAGS.items():
        argv += [flag] if given is None else [flag, given]
    config, _ = ConfigParser(TrainConfig).parse_settings(argv)
    assert {name: getattr(config, name) for _, name, _ in TRAIN_FLAGS.values()} == {
        name: expected for _, name, expected in TRAIN_FLAGS.values()}


@pytest.mark.parametrize("key", TRAIN_KEYS)
def test_train_config_keys(key, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({key: TRAIN_KEYS[key]}, ensure_ascii=False))
    assert getattr(resolve_config(path), key) == TRAIN_KEYS[key]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.json")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_every_key_reaches_its_field(path):
    from gemma_ocr.search.config import SETTING_KEYS, load_search_config

    data = json.loads(path.read_text())
    search_keys = {"search_space", *SETTING_KEYS} - set(TrainConfig.field_names())
    if search_keys & set(data):  # study settings (search_mode, pruner): a search file; its fixed part trains
        config = TrainConfig.from_dict(load_search_config(path).fixed)
    else:
        config = resolve_config(path)  # a training config, or a search config whose search_space is ignored
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if key in TrainConfig.field_names():
            assert getattr(config, key) == value, key
        else:
            assert key in search_keys, key
    for name in data.get("search_space", {}):
        assert name in TrainConfig.field_names(), name
    if "search_space" in data:
        parsed = load_search_config(path)
        assert set(parsed.search_space) == set(data["search_space"])
        for spec in parsed.search_space.values():  # every point of the space is a valid training config
            TrainConfig.from_dict({**parsed.fixed, spec.name: spec.representative()})


@pytest.mark.parametrize("flag", EVALUATE_FLAGS)
def test_evaluate_flags(flag):
    from gemma_ocr.evaluation.settings import EvalConfig

    given, name, expected = EVALUATE_FLAGS[flag]
    config, _ = ConfigParser(EvalConfig).parse_settings([flag, given])
    assert getattr(config, name) == expected


def test_transcribe_shares_the_request_flags():
    from gemma_ocr.evaluation.transcription import TranscribeConfig

    argv = ["img.png", "--no-resume", "--no-progress", "--timeout", "30"]
    for flag in ("--vllm-url", "--workers", "--model-name", "--save-interval"):
        argv += [flag, EVALUATE_FLAGS[flag][0]]
    config, _ = ConfigParser(TranscribeConfig).parse_settings(argv)
    assert config.inputs == ["img.png"] and config.resume is False and config.show_progress is False
    assert (config.workers, config.save_interval, config.timeout) == (8, 50, 30.0)


@pytest.mark.slow
@pytest.mark.parametrize("script", OTHER_FLAGS)
def test_other_programs_keep_their_seed_flags(script):
    env = {"PYTHONPATH": str(REPO / "lib"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(REPO / "core" / script), "--help"], capture_output=True, text=True,
                         env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for flag in OTHER_FLAGS[script]:
        assert flag in out.stdout.split() or f"{flag}," in out.stdout.split() or flag in out.stdout, flag


def test_khmer_tuner_schema_keys_reach_their_fields():
    """Every section key of the shipped experiments (the seed's YAML schema) lands in its TrainingConfig field."""
    import yaml

    from gemma_ocr.khmer_digits.tuner import SECTIONS, create_training_config

    experiments = yaml.safe_load((REPO / "configs/khmer_digits/phase3_simple_configs.yaml").read_text())["experiments"]
    for name, experiment in experiments.items():
        config = create_training_config(experiment, "out", name)
        for section, fields in SECTIONS.items():
            for key, value in (experiment.get(section) or {}).items():
                got = getattr(config, fields[key])
                expected = float(value) if isinstance(got, float) and isinstance(value, str) else value
                if section == "training" and key in ("learning_rate", "weight_decay") and "optimizer" in experiment \
                        and key in experiment["optimizer"]:
                    expected = experiment["optimizer"][key]  # the optimizer section wins, as the seed says
                assert got == expected or (isinstance(got, float) and math.isclose(got, float(expected))), (name, key)
