"""Fine-tuning the tiny Gemma 4: the collator's answer-only labels, LoRA SFT through tune(), the image-token budget
saved with the processor, and one step of full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.training.config import TrainConfig
from gemma_ocr.training.data import IGNORE_INDEX, OcrCollator
from gemma_ocr.training.tune import METRICS_FILE, tune
from tests.helpers.sft_fixtures import ocr_data, one_torch_thread, tiny_gemma4_dir, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INSTRUCTION = "請給我 OCR 結果"


def small_config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model_name=str(model_dir), input_data=str(data), output_dir=str(out), learning_rate=5e-3,
                max_steps=6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                gradient_accumulation_steps=1, eval_steps=3, save_steps=3, logging_steps=1, warmup_ratio=0.0,
                train_split="train[:80%]", val_split="train[80%:]", max_train_samples=12, max_eval_samples=4,
                cer_eval_samples=2, cer_eval_max_tokens=8, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_the_collator_masks_prompt_and_image_tokens_and_keeps_the_answer_and_turn_end(tiny_gemma4_dir):  # noqa: F811
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_gemma4_dir)
    tok = processor.tokenizer
    answers = ["Total: 42", "០១២ 發票號碼 long answer"]
    images = [Image.new("RGB", (120, 30), "white"), Image.new("RGB", (60, 60), "white")]
    collator = OcrCollator(processor, INSTRUCTION, max_length=8192)
    assert collator.family.name == "gemma4"
    batch = collator([{"image": image, "text": text} for image, text in zip(images, answers)])
    assert set(batch) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_position_ids",
                          "labels"}
    ids, labels, att, mm = batch["input_ids"], batch["labels"], batch["attention_mask"], batch["mm_token_type_ids"]
    assert batch["pixel_values"].shape[0] == batch["image_position_ids"].shape[0] == 2
    end = tok.convert_tokens_to_ids("<turn|>")
    for row, answer in enumerate(answers):
        kept = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert kept[-1] == end and tok.decode(kept[:-1]) == answer
        image_positions = ids[row] == tok.image_token_id
        assert 0 < image_positions.sum() <= 70 and (mm[row] == image_positions.long()).all()
        n, first = int(att[row].sum()), int((labels[row] != IGNORE_INDEX).nonzero()[0])
        assert first + len(kept) == n  # the labels are exactly the real tokens after the prompt
        assert (labels[row][:first] == IGNORE_INDEX).all() and (labels[row][n:] == IGNORE_INDEX).all()
        prompt = tok.decode(ids[row][:first])
        assert prompt.startswith("<bos><|turn>user\n<|image>") and prompt.endswith(f"{INSTRUCTION}<turn|>\n<|turn>model\n")
    assert (ids[0][int(att[0].sum()):] == tok.pad_token_id).all()


@pytest.fixture(scope="module")
def trained(tiny_gemma4_dir, ocr_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run4") / "adapter"
    config = small_config(tiny_gemma4_dir, ocr_data, out, image_token_budget=140, finetune_vision_layers=True)
    return config, tune(config)


def test_lora_training_lowers_the_loss_and_logs_eval_cer(trained):
    _, result = trained
    assert result["global_step"] == 6
    assert result["eval_loss"] < result["first_eval_loss"] - 0.02, result
    evals = [e for e in result["history"] if "eval_loss" in e]
    assert [e["step"] for e in evals] == [0, 3, 6] and all("eval_cer" in e for e in evals)
    assert result["eval_cer"] is not None and result["cer_eval_samples"] == 2


def test_the_adapter_and_the_budget_are_saved_with_the_gemma4_processor(trained):
    from transformers import AutoProcessor

    config, result = trained
    out = Path(result["output_dir"])
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert "language_model" in adapter["target_modules"] and r"\.linear" in adapter["target_modules"]
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Gemma4Processor" and processor.image_processor.max_soft_tokens == 140
    assert json.loads((out / METRICS_FILE).read_text())["global_step"] == 6


def test_full_fine_tuning_one_step(tiny_gemma4_dir, ocr_data, tmp_path):  # noqa: F811
    config = small_config(tiny_gemma4_dir, ocr_data, tmp_path / "full", train_mode="full", max_steps=1,
                          val_split="", cer_eval_samples=0, save_steps=1)
    result = tune(config)
    assert result["global_step"] == 1 and result["train_loss"] > 0
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["architectures"] == ["Gemma4ForConditionalGeneration"]
    assert saved["text_config"]["global_head_dim"] == saved["text_config"]["head_dim"]  # vLLM reads it


def test_budget_and_pan_and_scan_settings_the_family_lacks_are_one_line(tiny_model_dir, tiny_gemma4_dir, ocr_data,  # noqa: F811
                                                                        tmp_path):
    for model, setting, message in ((tiny_model_dir, {"image_token_budget": 280}, "a Gemma 3 model has no image-token"),
                                    (tiny_gemma4_dir, {"do_pan_and_scan": True}, "a Gemma 4 model has no pan-and-scan"),
                                    (tiny_gemma4_dir, {"lora_target_modules": ["fc1"]}, "it has language: q_proj")):
        with pytest.raises(GemmaOcrError, match=message) as err:
            tune(small_config(model, ocr_data, tmp_path / "x", **setting))
        assert "\n" not in str(err.value)


def test_the_budget_reaches_the_collator_and_the_cer_evaluation(tiny_gemma4_dir, ocr_data, tmp_path):  # noqa: F811
    from gemma_ocr.training.data import load_data
    from gemma_ocr.training.tune import build_trainer

    config = small_config(tiny_gemma4_dir, ocr_data, tmp_path / "b", image_token_budget=280)
    train_ds, val_ds = load_data(config)
    trainer, processor = build_trainer(config, train_ds, val_ds)
    assert processor.image_processor.max_soft_tokens == 280
    assert trainer.cer_evaluation.processor is processor and trainer.data_collator.processor is processor
    assert trainer.data_collator.family.name == "gemma4"


def test_a_gemma4_with_an_audio_tower_loads_with_sdpa_for_its_image_and_text_towers(tiny_gemma4_dir, tmp_path):  # noqa: F811
    """Real E2B/E4B checkpoints ship an audio tower that refuses SDPA; the training loader still loads them."""
    import shutil

    from transformers import AutoConfig, AutoModelForImageTextToText, Gemma4AudioConfig

    from gemma_ocr.modeling.loading import load_base_model

    folder = tmp_path / "with-audio"
    shutil.copytree(tiny_gemma4_dir, folder)
    config = AutoConfig.from_pretrained(folder)
    config.audio_config = Gemma4AudioConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            subsampling_conv_channels=(4, 4), output_proj_dims=16)
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):  # what a plain "sdpa" does
        AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa")
    model, _ = load_base_model(small_config(folder, tmp_path / "unused.json", tmp_path / "out"))
    assert type(model).__name__ == "Gemma4ForConditionalGeneration" and model.model.audio_tower is not None


def test_the_cer_evaluation_scores_the_answer_without_the_models_thinking(tiny_gemma4_dir, tmp_path):  # noqa: F811
    """A model that thinks before it answers is scored on its answer alone, as the served model is."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gemma_ocr.training.cer_eval import generate_answers
    from tests.helpers.eval_fixtures import answering_gemma4

    folder = answering_gemma4(tiny_gemma4_dir, tmp_path / "thinking",
                              ["<|channel>", "a", "b", "<channel|>", "H", "I", "<turn|>"])
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    images = [Image.new("RGB", (64, 24), "white"), Image.new("RGB", (48, 24), "white")]
    assert generate_answers(model, processor, images, INSTRUCTION, max_new_tokens=10) == ["HI", "HI"]
