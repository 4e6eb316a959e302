"""The search's settings through the configuration layer: every setting a config key and a flag, one
precedence (defaults < stored definition < config file < flags), one coercion and one error style."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.helpers.programs import assert_one_line_error
from gemma_ocr.commands.search import parser
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.config import SearchArguments
from gemma_ocr.search.runner import resolve_settings, run_search
from gemma_ocr.search.study_setup import CONFIG_ATTR
from tests.helpers.search_helpers import LINREG, LINREG_SPACE, run_cli, settings

#: every search setting -> a value other than its default (the walk fails when a setting is added without one)
VALUES = {
    "study_name": "walk", "search_mode": "random", "n_trials": 7, "max_total_trials": 9, "timeout": 60.0, "n_jobs": 2,
    "backend": LINREG, "sampler_seed": 3, "storage": "journal:{tmp}/walk.log", "resume": True,
    "base_output_dir": Path("{tmp}/trials"), "studies_dir": Path("{tmp}/studies"), "pruner": "none",
    "pruner_n_startup_trials": 2, "pruner_n_warmup_steps": 0, "pruner_interval_steps": 3, "heartbeat_interval": 5,
    "grace_period": 60, "storage_retry_timeout": 10.0, "progress": False, "objective": "cer",
}


def _value(name, tmp):
    value = VALUES[name]
    return type(value)(str(value).format(tmp=tmp)) if isinstance(value, (str, Path)) else value


def _from_flags(argv, tmp):
    [(_, flags), (_, fixed)], args = parser().parse_layers(argv)
    return resolve_settings(args.config, overrides=flags, fixed_overrides=fixed, studies_dir=tmp / "studies")


def _flag(name, value):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + name.replace("_", "-")]
    return [flag, str(value)]


def test_the_walk_covers_every_search_setting():
    assert set(VALUES) == set(SearchArguments.field_names())


@pytest.mark.parametrize("name", VALUES)
def test_every_search_setting_is_a_config_key_and_a_flag(name, tmp_path):
    value = _value(name, tmp_path)
    keyed, plain = tmp_path / "keyed.json", tmp_path / "plain.json"
    keyed.write_text(json.dumps({"search_space": LINREG_SPACE, name: str(value) if isinstance(value, Path) else value}))
    plain.write_text(json.dumps({"search_space": LINREG_SPACE}))
    from_file = _from_flags(["--config", str(keyed)], tmp_path)
    from_flag = _from_flags(["--config", str(plain), *_flag(name, value)], tmp_path)
    assert getattr(from_file, name) == value and getattr(from_flag, name) == value
    assert getattr(SearchArguments(), name) != value  # the walk sets something


def test_the_seed_study_keys_in_yaml_and_a_nested_pruner(tmp_path):
    cfg = tmp_path / "search.yaml"
    cfg.write_text("study_name: xclip\nn_trials: 100\nn_jobs: 3\nstorage: sqlite:///{}/o.db\ntimeout: null\n"
                   "pruner:\n  type: median\n  n_startup_trials: 1\n  n_warmup_steps: 2\n  interval_steps: 4\n"
                   "search_space:\n  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-2, log: true}}\n"
                   .format(tmp_path))
    s = resolve_settings(cfg)
    assert (s.study_name, s.n_trials, s.n_jobs, s.storage, s.timeout) == ("xclip", 100, 3, f"sqlite:///{tmp_path}/o.db", None)
    assert (s.pruner, s.pruner_n_startup_trials, s.pruner_n_warmup_steps, s.pruner_interval_steps) == ("median", 1, 2, 4)
    assert s.search_space["learning_rate"].log


def test_defaults_then_stored_definition_then_config_file_then_flags(tmp_path):
    first = settings(tmp_path, "layers", search_mode="random", n_trials=1, pruner="none", pruner_n_warmup_steps=3,
                     fixed={"n_samples": 120})
    run_search(first)
    common = ["--study-name", "layers", "--resume", "--studies-dir", str(tmp_path / "studies")]

    stored = _from_flags(common, tmp_path)  # the study's own definition comes back
    assert (stored.search_mode, stored.pruner, stored.pruner_n_warmup_steps, stored.backend) == ("random", "none", 3, LINREG)
    assert stored.base_output_dir == first.base_output_dir and stored.fixed == {"n_samples": 120}
    assert stored.n_trials == 20 and stored.pruner_n_startup_trials == 5  # not stored: the defaults

    cfg = tmp_path / "more.json"
    cfg.write_text(json.dumps({"search_space": LINREG_SPACE, "search_mode": "bayesian", "pruner": {"n_warmup_steps": 4},
                               "n_trials": 2, "n_samples": 80}))
    filed = _from_flags([*common, "--config", str(cfg)], tmp_path)  # the file beats the stored definition
    assert (filed.search_mode, filed.pruner_n_warmup_steps, filed.n_trials, filed.fixed) == ("bayesian", 4, 2, {"n_samples": 80})
    assert filed.pruner == "none" and filed.backend == LINREG  # what the file leaves out stays the stored value

    flagged = _from_flags([*common, "--config", str(cfg), "--pruner-warmup-steps", "5", "--search-mode", "random",
                           "--seed", "7"], tmp_path)  # flags beat both
    assert (flagged.pruner_n_warmup_steps, flagged.search_mode, flagged.fixed) == (5, "random", {"n_samples": 80, "seed": 7})


def test_a_study_stored_with_the_nested_pruner_object_resumes(tmp_path):
    """Studies record their settings; one recorded with a ``pruner`` object reads as the pruner_* settings."""
    storage = f"sqlite:///{tmp_path / 'studies' / 'old.db'}"
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="old", storage=storage)
    study.set_user_attr(CONFIG_ATTR, {
        "search_space": LINREG_SPACE, "fixed": {"n_samples": 90}, "metric": "val_mse",
        "settings": {"search_mode": "random", "backend": LINREG, "base_output_dir": str(tmp_path / "trials"),
                     "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 2, "interval_steps": 1}}})
    s = resolve_settings(None, study_name="old", resume=True, studies_dir=tmp_path / "studies")
    assert (s.search_mode, s.backend, s.pruner, s.pruner_n_startup_trials, s.pruner_n_warmup_steps) == (
        "random", LINREG, "median", 1, 2)
    assert s.fixed == {"n_samples": 90} and set(s.search_space) == set(LINREG_SPACE)


@pytest.mark.parametrize("argv, config, message", [
    (["--n-trails", "3"], None, "unknown flag --n-trails; did you mean --n-trials?"),
    (["--n-trials", "x"], None, "--n-trials must be an integer or null, got 'x'"),
    (["--n-trials", "0"], None, "--n-trials must be >= 1, got 0"),
    (["--timeout", "nan"], None, "--timeout must be a finite number, got 'nan'"),
    (["--search-mode", "bayes"], None, "--search-mode must be one of bayesian, random, grid, got 'bayes'; "
                                       "did you mean 'bayesian'?"),
    (["--pruner-warmup-steps", "-1"], None, "--pruner-warmup-steps must be >= 0, got -1"),
    (["--grace-period", "10"], None, "--grace-period must be above heartbeat_interval (15 s), got 10"),
    (["--sampler-seed", "-1"], None, "--sampler-seed must be in [0, 4294967295], got -1"),
    (["--seed", "x"], None, "--seed must be an integer or null, got 'x'"),
    ([], {"n_jobs": "two"}, "s.json: field 'n_jobs' must be an integer, got 'two'"),
    ([], {"search_mode": "grdi"}, "s.json: field 'search_mode' must be one of bayesian, random, grid, got 'grdi'; "
                                  "did you mean 'grid'?"),
    ([], {"pruner": {"n_warmup_steps": -1}}, "s.json: field 'pruner.n_warmup_steps' must be >= 0, got -1"),
    ([], {"pruner": {"warmup": 3}}, "s.json: pruner: unknown key 'warmup' (known: type, "
                                          "n_startup_trials, n_warmup_steps, interval_steps)"),
    ([], {"heartbeat_interval": 30, "grace_period": 20}, "s.json: field 'grace_period' must be above heartbeat_interval "
                                                         "(30 s), got 20"),
])
def test_a_bad_setting_is_one_line_naming_the_flag_or_the_file_key(argv, config, message, tmp_path):
    if config is not None:
        (tmp_path / "s.json").write_text(json.dumps({"search_space": LINREG_SPACE, **config}))
        argv = [*argv, "--config", str(tmp_path / "s.json")]
    with pytest.raises(GemmaOcrError) as e:
        _from_flags(argv, tmp_path)
    assert str(e.value).replace(str(tmp_path) + "/", "") == message


def test_the_cli_exits_2_with_the_line_and_creates_nothing(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"search_space": LINREG_SPACE, "pruner": {"n_startup_trials": "few"}}))
    base = ["--backend", LINREG, "--study-name", "bad", "--studies-dir", str(tmp_path / "studies"), "--no-progress"]
    proc = run_cli("hyperparameter_search.py", *base, "--config", str(tmp_path / "s.json"), check=False)
    assert_one_line_error(proc, "s.json: field 'pruner.n_startup_trials' must be an integer, got 'few'")
    proc = run_cli("hyperparameter_search.py", *base, "--heartbeat-interval", "x", check=False)
    assert_one_line_error(proc, "--heartbeat-interval must be an integer, got 'x'")
    assert not (tmp_path / "studies").exists()


def test_a_trainer_field_in_the_search_space_is_checked_by_the_training_layer():
    """Any TrainingArguments field can be searched; each of its values is checked before the study starts."""
    from gemma_ocr.search.backends import GemmaBackend
    from gemma_ocr.search.space import parse_search_space

    space = {"lr_scheduler_type": {"choices": ["cosine", "constant"]}, "adam_beta2": {"type": "uniform", "low": 0.9,
                                                                                       "high": 0.999}}
    GemmaBackend().validate({"optim": "adamw_torch"}, parse_search_space(space), "s.json")
    space["lr_scheduler_type"]["choices"].append("cosin")
    with pytest.raises(GemmaOcrError) as e:
        GemmaBackend().validate({}, parse_search_space(space), "s.json")
    assert str(e.value).startswith("s.json: search_space.lr_scheduler_type = 'cosin': field 'lr_scheduler_type' must be one of")
    assert str(e.value).endswith("did you mean 'cosine'?")


def test_khmer_trial_parameters_go_through_the_layer(tmp_path):
    from gemma_ocr.khmer_digits.backend import trial_config
    from gemma_ocr.errors import ConfigurationError

    config = trial_config({"lr": "1e-3", "epochs": "3", "model": "lite"}, tmp_path / "trial_0")  # YAML's strings too
    assert (config.learning_rate, config.num_epochs, config.model_name, config.loss_type) == (1e-3, 3, "lite", "ctc")
    assert (config.output_dir, config.experiment_name, config.use_tensorboard) == (str(tmp_path), "trial_0", False)
    with pytest.raises(ConfigurationError, match=r"^Khmer-digits trial parameters: field 'batch_size' must be an integer, "
                                                 r"got 'big'$"):
        trial_config({"batch_size": "big"}, tmp_path)
    with pytest.raises(ConfigurationError, match="unknown hyperparameter 'epoch'; did you mean 'epochs'"):
        trial_config({"epoch": 2}, tmp_path)
