"""train_mode: full trains every weight, LoRA only its adapters; the same seed gives the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gemma_ocr.training.config import TrainConfig
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.training.tune import METRICS_FILE, tune
from tests.helpers.sft_fixtures import ocr_data, tiny_model_dir, one_torch_thread  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def short_run(model_dir, data, out, **kw) -> TrainConfig:
    settings = dict(model_name=str(model_dir), input_data=str(data), output_dir=str(out), learning_rate=5e-3,
                    max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                    gradient_accumulation_steps=1, eval_steps=3, save_steps=3, logging_steps=1, warmup_ratio=0.0,
                    train_split="train[:80%]", val_split="train[80%:]", seed=3, report_to=["none"])
    settings.update(kw)
    return TrainConfig(**settings)


def test_full_training_changes_every_weight_and_saves_a_whole_model(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "full"
    result = tune(short_run(tiny_model_dir, ocr_data, out, train_mode="full", gradient_checkpointing=False))
    assert result["eval_loss"] < result["first_eval_loss"]
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(after) == sorted(before)  # the same tensors, under the hub's names
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "train_config.json").read_text())["train_mode"] == "full"
    AutoModelForImageTextToText.from_pretrained(out)  # a plain checkpoint, servable as it is


def test_lora_training_changes_only_the_adapters(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "lora"
    tune(short_run(tiny_model_dir, ocr_data, out))
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # B starts at zero: it trained
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_model_dir), out)
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in model.named_parameters() if "lora_" not in n}
    fresh = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    assert len(frozen) == len(base)
    assert all(torch.equal(p, fresh[name]) for name, p in frozen.items())


def test_the_same_seed_gives_the_same_losses(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    """Same seed, same config, same CPU: the same training and evaluation losses, to the last bit."""
    runs = [tune(short_run(tiny_model_dir, ocr_data, tmp_path / name)) for name in ("a", "b")]
    losses = [[(e["step"], e.get("loss"), e.get("eval_loss")) for e in r["history"]] for r in runs]
    assert losses[0] == losses[1] and runs[0]["eval_loss"] == runs[1]["eval_loss"]
    a = load_file(str(tmp_path / "a/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tune(short_run(tiny_model_dir, ocr_data, tmp_path / "c", seed=4))
    assert other["eval_loss"] != runs[0]["eval_loss"]  # the seed is what makes them equal


@pytest.mark.parametrize("change, fragment", [
    ({"train_mode": "partial"}, "'train_mode' must be one of lora, full"),
    ({"train_mode": "full", "load_in_4bit": True}, "cannot train 4-bit ones"),
    ({"train_mode": "full", "backend": "unsloth"}, "backend 'transformers' only"),
])
def test_train_mode_is_checked_up_front(change, fragment):
    with pytest.raises(GemmaOcrError, match=fragment):
        TrainConfig.from_dict(change)


def test_metrics_file_reports_the_mode_of_the_run(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    out = tmp_path / "m"
    tune(short_run(tiny_model_dir, ocr_data, out, train_mode="full", max_steps=1, eval_steps=1, save_steps=1))
    assert json.loads((Path(out) / METRICS_FILE).read_text())["global_step"] == 1
