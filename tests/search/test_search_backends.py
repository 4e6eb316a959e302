"""The real backends under the search: LoRA SFT of the tiny Gemma 3 via tune(), and the Khmer-digits CNN."""

from __future__ import annotations

import json

import optuna
import pytest

from tests.helpers.search_helpers import ROOT, run_cli
from tests.helpers.sft_fixtures import ocr_data, one_torch_thread, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.slow


def test_gemma_search_prunes_through_the_trainer_callback_and_exports_a_config_sft_accepts(
        tmp_path, tiny_model_dir, ocr_data):  # noqa: F811
    """Two real trials on the tiny model: a good learning rate completes, a planted useless one is pruned."""
    from gemma_ocr.training.config import TrainConfig
    from gemma_ocr.search.storage import open_storage

    config = json.loads((ROOT / "configs/hyperparm_configs/optuna/config.json").read_text())
    config["search_space"] = {"learning_rate": {"type": "categorical", "choices": [0.01, 1e-9]}}
    config.update(load_in_4bit=False, max_steps=3, eval_steps=1, logging_steps=1, save_steps=100, warmup_ratio=0.0,
                  per_device_train_batch_size=2, per_device_eval_batch_size=4, gradient_accumulation_steps=1,
                  max_seq_length=512, gradient_checkpointing=False, max_eval_samples=4, report_to=["none"])
    (tmp_path / "search.json").write_text(json.dumps(config))
    out = run_cli(
        "hyperparameter_search.py", "--study-name", "gemma-tiny", "--search-mode", "grid",
        "--config", str(tmp_path / "search.json"), "--model-name", str(tiny_model_dir), "--input-data", str(ocr_data),
        "--pruner-startup-trials", "1", "--pruner-warmup-steps", "0",
        "--studies-dir", str(tmp_path / "studies"), "--base-output-dir", str(tmp_path / "trials"), "--no-progress",
    )
    assert "2 trials, 1 complete, 1 pruned, 0 failed" in out.stdout, out.stdout

    study = optuna.load_study(study_name="gemma-tiny", storage=open_storage(f"sqlite:///{tmp_path / 'studies' / 'gemma-tiny.db'}"))
    good, bad = study.trials
    assert good.state.name == "COMPLETE" and good.params == {"learning_rate": 0.01}
    assert bad.state.name == "PRUNED" and bad.params == {"learning_rate": 1e-9}
    assert 0 in good.intermediate_values and len(good.intermediate_values) >= 3  # eval_loss at every eval step
    assert max(bad.intermediate_values) < 3  # stopped before its last step
    assert good.value == pytest.approx(good.user_attrs["metrics"]["eval_loss"])

    trial_dir = tmp_path / "trials" / "trial_0"
    results = json.loads((trial_dir / "trial_0_results.json").read_text())
    assert results["state"] == "COMPLETE" and results["metrics"]["global_step"] == 3
    assert (trial_dir / "adapter_model.safetensors").is_file()
    trained = json.loads((trial_dir / "train_config.json").read_text())  # what tune() actually ran
    assert trained["wandb_group"] == "gemma-tiny" and trained["run_name"] == "gemma-tiny-trial-0"
    assert trained["learning_rate"] == 0.01 and trained["model_name"] == str(tiny_model_dir)
    assert json.loads((tmp_path / "trials" / "trial_1" / "trial_1_results.json").read_text())["state"] == "PRUNED"

    best_params = json.loads((tmp_path / "studies" / "gemma-tiny_best_params.json").read_text())
    assert best_params["best_trial_number"] == 0 and best_params["n_pruned"] == 1 and best_params["search_mode"] == "grid"
    best_config_path = tmp_path / "studies" / "gemma-tiny_best_config.json"
    best_config = json.loads(best_config_path.read_text())
    cfg = TrainConfig.from_dict(best_config)
    assert cfg.learning_rate == 0.01 and cfg.lora_r == 16 and cfg.max_steps == 3 and cfg.input_data == str(ocr_data)
    assert "output_dir" not in best_config and "search_space" not in best_config
    printed = run_cli("sft_gemma.py", "--config", str(best_config_path), "--lora-output-dir", str(tmp_path / "final"),
                      "--print-config")
    resolved = json.loads(printed.stdout)
    assert resolved["learning_rate"] == 0.01 and resolved["output_dir"] == str(tmp_path / "final")
    assert {k: v for k, v in resolved.items() if k != "output_dir"} == {
        k: v for k, v in cfg.to_dict().items() if k != "output_dir"}


def test_a_search_space_over_trainer_fields_reaches_each_trials_trainer(tmp_path, tiny_model_dir, ocr_data):  # noqa: F811
    """TrainingArguments fields the project lists nowhere, searched from a YAML config: each trial's trainer ran
    with that trial's values (the arguments the trainer saved beside the adapter)."""
    import torch

    (tmp_path / "search.yaml").write_text(f"""
search_mode: grid
pruner: none
search_space:
  lr_scheduler_type: {{choices: [cosine, constant]}}
  adam_beta2: {{type: float, low: 0.9, high: 0.99, log: true, grid: [0.95]}}
model_name: {tiny_model_dir}
input_data: {ocr_data}
max_steps: 1
eval_steps: 1
eval_on_start: false
warmup_ratio: 0.0
per_device_train_batch_size: 2
per_device_eval_batch_size: 4
gradient_accumulation_steps: 1
max_seq_length: 512
gradient_checkpointing: false
max_eval_samples: 4
report_to: [none]
""")
    out = run_cli("hyperparameter_search.py", "--study-name", "trainer-fields", "--config", str(tmp_path / "search.yaml"),
                  "--studies-dir", str(tmp_path / "studies"), "--base-output-dir", str(tmp_path / "trials"), "--no-progress")
    assert "2 trials, 2 complete" in out.stdout, out.stdout
    study = optuna.load_study(study_name="trainer-fields", storage=f"sqlite:///{tmp_path / 'studies' / 'trainer-fields.db'}")
    assert sorted(t.params["lr_scheduler_type"] for t in study.trials) == ["constant", "cosine"]
    for trial in study.trials:
        args = torch.load(tmp_path / "trials" / f"trial_{trial.number}" / "training_args.bin", weights_only=False)
        assert args.lr_scheduler_type.value == trial.params["lr_scheduler_type"]
        assert args.adam_beta2 == trial.params["adam_beta2"] == 0.95


def test_khmer_cnn_backend_runs_a_trial(tmp_path):
    from tests.helpers.khmer_helpers import tiny_dataset

    meta = tiny_dataset(tmp_path / "data", n_train=8, n_val=4)
    (tmp_path / "search.json").write_text(json.dumps({
        "search_space": {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
        "data": str(meta), "model": "lite", "epochs": 1, "batch_size": 8, "num_threads": 1,
    }))
    out = run_cli("hyperparameter_search.py", "--backend", "khmer-cnn", "--study-name", "khmer", "--n-trials", "1",
                  "--config", str(tmp_path / "search.json"), "--studies-dir", str(tmp_path / "studies"),
                  "--base-output-dir", str(tmp_path / "trials"), "--no-progress")
    assert "1 trials, 1 complete" in out.stdout and "best char_accuracy" in out.stdout
    results = json.loads((tmp_path / "trials" / "trial_0" / "trial_0_results.json").read_text())
    assert results["backend"] == "khmer-cnn" and 0.0 <= results["value"] <= 1.0 and results["metrics"]["epochs"] == 1
    best = json.loads((tmp_path / "studies" / "khmer_best_config.json").read_text())
    assert best["model_name"] == "lite" and best["num_epochs"] == 1 and best["metadata_path"] == str(meta)

    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.search.backends import get_backend
    from gemma_ocr.search.space import parse_search_space

    with pytest.raises(GemmaOcrError, match="s.json: .*unknown hyperparameter.*input_data"):
        get_backend("khmer-cnn").validate({"input_data": "x.json"}, parse_search_space({"lr": {"type": "uniform", "low": 0.1, "high": 0.2}}), "s.json")


def test_concurrent_trials_log_to_separate_offline_wandb_runs(tmp_path, tiny_model_dir, ocr_data, one_torch_thread):  # noqa: F811
    """--n-jobs 2: two trials train at once in one process, each into its own W&B run under its own folder."""
    from gemma_ocr.search.runner import run_search
    from gemma_ocr.training.tracking import read_offline_wandb_history
    from tests.helpers.search_helpers import settings

    fixed = dict(model_name=str(tiny_model_dir), input_data=str(ocr_data), load_in_4bit=False, max_steps=2,
                 eval_steps=1, logging_steps=1, save_steps=100, warmup_ratio=0.0, per_device_train_batch_size=2,
                 per_device_eval_batch_size=4, gradient_accumulation_steps=1, max_seq_length=512,
                 gradient_checkpointing=False, max_eval_samples=4, report_to=["wandb"], wandb_project="gemma-ocr-tests")
    space = {"learning_rate": {"type": "categorical", "choices": [0.01, 1e-4]}}
    s = settings(tmp_path, "wandb-jobs", space=space, backend="gemma", search_mode="grid", n_trials=None, n_jobs=2,
                 fixed=fixed)
    summary = run_search(s)
    assert summary.counts["complete"] == 2, summary
    durations = []
    for number in (0, 1):
        trial_dir = s.base_output_dir / f"trial_{number}"
        runs = list((trial_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, runs  # its own run, in its own folder
        results = json.loads((trial_dir / f"trial_{number}_results.json").read_text())
        rows = read_offline_wandb_history(runs[0])
        evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
        assert evals and evals[-1] == pytest.approx(results["metrics"]["eval_loss"])  # this trial's losses only
        assert [r["train/global_step"] for r in rows if "eval/loss" in r] == [0, 1, 2]
        durations.append((results["started"], results["finished"]))
    assert durations[0][0] <= durations[1][1] and durations[1][0] <= durations[0][1]  # the two trials overlapped
