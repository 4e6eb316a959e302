"""Any TrainingArguments / SFTConfig field, set in a config file or as a flag, reaches the trainer that tune() runs."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from gemma_ocr.training.config import TrainConfig
from gemma_ocr.flags import ConfigParser
from gemma_ocr.training.tune import tune
from tests.helpers.sft_fixtures import ocr_data, one_torch_thread, tiny_model_dir  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


class Probe(TrainerCallback):
    """What the trainer holds when training starts: its arguments, optimizer, scheduler and model."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        embeddings = model.get_input_embeddings()
        self.seen = {
            "args": args,
            "betas": optimizer.param_groups[0]["betas"],
            "eps": optimizer.param_groups[0]["eps"],
            "num_cycles": lr_scheduler.lr_lambdas[0].keywords.get("num_cycles"),
            "neftune": getattr(embeddings, "neftune_noise_alpha", None),
        }


def test_trainer_fields_from_file_and_flags_reach_the_trainer(tmp_path, tiny_model_dir, ocr_data):  # noqa: F811
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({
        "model_name": str(tiny_model_dir), "input_data": str(ocr_data), "val_split": "", "max_steps": 2,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_seq_length": 512,
        "save_steps": 1, "report_to": ["none"],
        # trainer fields the project lists nowhere:
        "adam_beta2": 0.95, "lr_scheduler_type": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2},
    }))
    parser = ConfigParser(TrainConfig, ignore_keys=TrainConfig.ignored_keys)
    config, _ = parser.parse_settings(["--config", str(cfg), "--lora-output-dir", str(tmp_path / "out"),
                                       "--neftune-noise-alpha", "5", "--save_strategy", "no", "--adam-epsilon", "1e-6"])
    probe = Probe()
    result = tune(config, callbacks=[probe])

    args = probe.seen["args"]
    assert (args.adam_beta2, args.adam_epsilon, args.neftune_noise_alpha) == (0.95, 1e-6, 5.0)
    assert args.lr_scheduler_type == "cosine_with_restarts" and args.lr_scheduler_kwargs == {"num_cycles": 2}
    assert probe.seen["betas"] == (0.9, 0.95) and probe.seen["eps"] == 1e-6  # the optimizer was built with them
    assert probe.seen["num_cycles"] == 2  # ... the scheduler too
    assert probe.seen["neftune"] == 5.0  # NEFTune noise on the input embeddings
    assert result["global_step"] == 2
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # save_strategy "no" beat save_steps 1
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["adam_beta2"] == 0.95 and saved["save_strategy"] == "no"  # what ran is on record
