"""Search-space parsing (JSON and YAML forms), grids, config files and their validation."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.config import DEFAULT_SEARCH_SPACE, SearchArguments, load_search_config, parse_search_config
from gemma_ocr.search.space import build_grid, grid_points, parse_search_space
from gemma_ocr.settings import resolve
from tests.helpers.search_helpers import ROOT

CONFIGS = ROOT / "configs" / "hyperparm_configs"
SEARCH_CONFIGS = ["optuna/config.json", "search_space_aggressive.json", "search_space_conservative.json", "grid_search_small.json"]


def test_seed_json_types_become_optuna_distributions():
    space = parse_search_space({
        "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 5e-4},
        "num_train_epochs": {"type": "int", "low": 2, "high": 5, "step": 1},
        "lora_r": {"type": "categorical", "choices": [8, 16, 32, 64]},
        "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.15},
    })
    d = {name: spec.distribution() for name, spec in space.items()}
    assert d["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 5e-4, log=True)
    assert d["num_train_epochs"] == optuna.distributions.IntDistribution(2, 5, step=1)
    assert d["lora_r"] == optuna.distributions.CategoricalDistribution([8, 16, 32, 64])
    assert d["warmup_ratio"] == optuna.distributions.FloatDistribution(0.0, 0.15)
    # every value a trial suggests lies in its range
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        values = {n: s.suggest(t) for n, s in space.items()}
        assert 1e-5 <= values["learning_rate"] <= 5e-4 and values["num_train_epochs"] in (2, 3, 4, 5)
        assert values["lora_r"] in (8, 16, 32, 64) and isinstance(values["num_train_epochs"], int)
        study.tell(t, 0.0)


def test_yaml_form_with_log_flag_and_inferred_categorical(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(
        "study_name: yaml-study\nn_trials: 7\nn_jobs: 2\ntimeout: null\n"
        "search_space:\n"
        "  learning_rate:\n    type: float\n    low: 1.0e-5\n    high: 1.0e-2\n    log: true\n"
        "  lora_dropout:\n    type: float\n    low: 0.0\n    high: 0.3\n"
        "  lora_r:\n    choices: [8, 16]\n"
        "  num_train_epochs:\n    type: int\n    low: 1\n    high: 3\n"
        "lora_alpha: 32\n",
        encoding="utf-8",
    )
    cfg = load_search_config(path)
    assert cfg.search_space["learning_rate"].log and cfg.search_space["learning_rate"].kind == "float"
    assert not cfg.search_space["lora_dropout"].log
    assert cfg.search_space["lora_r"].choices == (8, 16)
    assert cfg.settings.values == {"study_name": "yaml-study", "n_trials": 7, "n_jobs": 2, "timeout": None}
    assert cfg.fixed == {"lora_alpha": 32}


@pytest.mark.parametrize("spec, message", [
    ({"type": "gaussian", "low": 0, "high": 1}, "unknown type 'gaussian'"),
    ({"low": 0, "high": 1}, 'missing "type"'),
    ({"type": "uniform", "low": 1.0}, 'needs "low" and "high"'),
    ({"type": "uniform", "low": 2.0, "high": 1.0}, "greater than high"),
    ({"type": "loguniform", "low": 0.0, "high": 1.0}, "needs low > 0"),
    ({"type": "int", "low": 1.5, "high": 4}, "whole numbers"),
    ({"type": "int", "low": 1, "high": 99999999999999999999999}, "int parameters must fit in 64 bits"),
    ({"type": "int", "low": 1, "high": 8, "step": 2, "log": True}, "cannot be combined"),
    ({"type": "categorical", "choices": []}, "non-empty"),
    ({"type": "categorical", "choices": [[1, 2]]}, "strings, numbers"),
    ({"type": "uniform", "low": "a", "high": 1}, "expected a number"),
    ({"type": "uniform", "lo": 0, "high": 1}, "unknown key"),
    ({"type": "uniform", "low": 0, "high": 1, "grid": [0.5, 2.0]}, "inside"),
    ("0.1", "expected an object"),
])
def test_bad_parameter_descriptions_fail_with_one_clear_line(spec, message):
    with pytest.raises(GemmaOcrError) as e:
        parse_search_space({"learning_rate": spec}, "cfg.json: search_space")
    text = str(e.value)
    assert message in text and "cfg.json: search_space.learning_rate" in text and "\n" not in text


def test_grid_from_discrete_values_and_refusal_of_continuous_ranges():
    space = parse_search_space({
        "lora_r": {"type": "categorical", "choices": [8, 16]},
        "num_train_epochs": {"type": "int", "low": 2, "high": 6, "step": 2},
        "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 5e-4, "grid": [5e-5, 2e-4]},
        "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.1, "step": 0.05},
    })
    grid = build_grid(space)
    assert grid == {"lora_r": [8, 16], "num_train_epochs": [2, 4, 6], "learning_rate": [5e-5, 2e-4],
                    "warmup_ratio": [0.0, 0.05, 0.1]}
    points = grid_points(grid)
    assert len(points) == 2 * 3 * 2 * 3 and len({json.dumps(p, sort_keys=True) for p in points}) == len(points)

    continuous = parse_search_space({"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 5e-4}})
    with pytest.raises(GemmaOcrError, match=r'continuous; list the values to try, e\.g\. "grid"'):
        build_grid(continuous, "my.json: search_space")


@pytest.mark.parametrize("name", SEARCH_CONFIGS)
def test_shipped_search_configs_are_valid_training_configs(name):
    from gemma_ocr.training.config import TrainConfig
    from gemma_ocr.search.backends import GemmaBackend

    cfg = load_search_config(CONFIGS / name)
    GemmaBackend().validate(cfg.fixed, cfg.search_space, cfg.source)  # names and values are TrainConfig's
    for spec in cfg.search_space.values():
        TrainConfig.from_dict({**cfg.fixed, spec.name: spec.representative()})
    if "grid" in name:
        assert len(grid_points(build_grid(cfg.search_space))) == 4 and cfg.settings.values["search_mode"] == "grid"


def test_unknown_fixed_parameter_and_searched_and_fixed_clash_are_clear_errors(tmp_path):
    from gemma_ocr.search.backends import GemmaBackend

    cfg = parse_search_config({"search_space": {"lora_r": {"type": "categorical", "choices": [8]}},
                               "lora_rank": 8}, "x.json")
    with pytest.raises(GemmaOcrError, match=r"x.json: unknown key 'lora_rank'; did you mean 'lora_r'"):
        GemmaBackend().validate(cfg.fixed, cfg.search_space, cfg.source)
    with pytest.raises(GemmaOcrError, match="both a fixed parameter and in search_space"):
        parse_search_config({"search_space": {"lora_r": {"type": "categorical", "choices": [8]}}, "lora_r": 8}, "y.json")
    with pytest.raises(GemmaOcrError, match="z.json: search_space: unknown key 'learnin_rate'; did you mean 'learning_rate'"):
        cfg = parse_search_config({"search_space": {"learnin_rate": {"type": "uniform", "low": 0.1, "high": 1}}}, "z.json")
        GemmaBackend().validate(cfg.fixed, cfg.search_space, cfg.source)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"search_space": {', encoding="utf-8")
    with pytest.raises(GemmaOcrError, match="malformed JSON"):
        load_search_config(bad_json)


def test_comment_keys_are_ignored_and_pruner_settings_parse():
    cfg = parse_search_config({"_comment": "x", "pruner": {"n_startup_trials": 2, "n_warmup_steps": 0}}, "p.json")
    pruner = resolve(SearchArguments, cfg.settings)
    assert cfg.fixed == {} and (pruner.pruner, pruner.pruner_n_startup_trials, pruner.pruner_n_warmup_steps) == ("median", 2, 0)
    with pytest.raises(GemmaOcrError, match="p.json: pruner: unknown key 'warmup'"):
        parse_search_config({"pruner": {"warmup": 3}}, "p.json")


def test_default_training_config_without_search_space_gets_the_default_space():
    cfg = load_search_config(Path(CONFIGS / "default.json"))
    assert set(cfg.search_space) == set(DEFAULT_SEARCH_SPACE) == {"learning_rate", "finetune_vision_layers"}
    assert "finetune_vision_layers" not in cfg.fixed  # the file's value gives way to the search
    assert cfg.search_space["learning_rate"].log and cfg.fixed["model_name"]


@pytest.mark.parametrize("backend, space, message", [
    ("gemma", {"lora_r": {"type": "categorical", "choices": [8, "sixteen"]}},
     "s.json: search_space.lora_r = 'sixteen': field 'lora_r' must be"),
    ("gemma", {"lora_dropout": {"type": "uniform", "low": 0.0, "high": 1.5}}, "search_space.lora_dropout = 1.5: "),
    ("gemma", {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3, "grid": [1e-4]},
               "lora_alpha": {"choices": [16, 32, None]}}, "search_space.lora_alpha = None: "),
    ("khmer-cnn", {"batch_size": {"choices": [32, "big"]}}, "s.json: search_space.batch_size = 'big': "),
])
def test_every_choice_and_both_ends_of_a_range_are_checked_before_the_study_starts(backend, space, message):
    from gemma_ocr.search.backends import get_backend

    with pytest.raises(GemmaOcrError) as e:
        get_backend(backend).validate({}, parse_search_space(space), "s.json")
    assert message in str(e.value), str(e.value)


def test_a_bad_later_choice_stops_the_cli_in_one_line_and_leaves_no_study(tmp_path):
    from tests.helpers.programs import assert_one_line_error
    from tests.helpers.search_helpers import run_cli

    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"search_space": {"lora_r": {"type": "categorical", "choices": [8, "sixteen"]}}}))
    proc = run_cli("hyperparameter_search.py", "--study-name", "bad-choice", "--config", str(cfg), "--studies-dir",
                   str(tmp_path / "studies"), "--base-output-dir", str(tmp_path / "trials"), "--no-progress", check=False)
    assert_one_line_error(proc, "search_space.lora_r = 'sixteen'", "field 'lora_r'")
    assert not (tmp_path / "studies" / "bad-choice.db").exists() and not (tmp_path / "trials").exists()


def test_the_image_token_budget_is_a_categorical_dimension_that_reaches_each_trial(tmp_path):
    from gemma_ocr.search.backends import get_backend

    budgets = [70, 140, 280, 560, 1120]
    cfg = parse_search_config({"search_space": {"image_token_budget": {"type": "categorical", "choices": budgets}},
                               "lora_r": 8}, "s.json")
    backend = get_backend("gemma")
    backend.validate(cfg.fixed, cfg.search_space, "s.json")  # every budget is a valid training config
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        value = cfg.search_space["image_token_budget"].suggest(study.ask())
        assert value in budgets
        assert backend.export_config(cfg.fixed, {"image_token_budget": value})["image_token_budget"] == value
    assert grid_points(build_grid(cfg.search_space)) == [{"image_token_budget": b} for b in budgets]


@pytest.mark.parametrize("spec, fixed, message", [
    ({"choices": [70, 100]}, {}, "s.json: search_space.image_token_budget: image_token_budget 100: a Gemma 4 model "
                                 "takes one of 70, 140, 280, 560, 1120"),
    ({"type": "int", "low": 70, "high": 280}, {}, 'search it as {"type": "categorical"'),
    ({"choices": [70]}, {"model_name": str(ROOT / "models/tiny-gemma3-reader")}, "a Gemma 3 model has no image-token "
                                                                                "budget"),
])
def test_a_budget_the_family_does_not_take_is_one_line(spec, fixed, message):
    with pytest.raises(GemmaOcrError) as e:
        parse_search_config({"search_space": {"image_token_budget": spec}, **fixed}, "s.json")
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_bad_budget_stops_the_cli_in_one_line_and_leaves_no_study(tmp_path):
    from tests.helpers.programs import assert_one_line_error
    from tests.helpers.search_helpers import run_cli

    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"search_space": {"image_token_budget": {"type": "categorical", "choices": [70, 300]}}}))
    proc = run_cli("hyperparameter_search.py", "--study-name", "bad-budget", "--config", str(cfg), "--studies-dir",
                   str(tmp_path / "studies"), "--base-output-dir", str(tmp_path / "trials"), "--no-progress", check=False)
    assert_one_line_error(proc, "search_space.image_token_budget: image_token_budget 300")
    assert not (tmp_path / "studies" / "bad-budget.db").exists() and not (tmp_path / "trials").exists()
