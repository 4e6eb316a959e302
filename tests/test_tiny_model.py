"""The tiny Gemma 3 checkpoint loads through the Auto classes like a hub checkpoint and runs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from sft_fixtures import tiny_model_dir  # noqa: F401


def test_tiny_model_reloads_with_auto_classes(tiny_model_dir):  # noqa: F811
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert config["model_type"] == "gemma3"
    size = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert size < 10 * 2**20

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "Gemma3Processor"
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"

    image = Image.new("RGB", (180, 40), "white")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "請給我 OCR 結果"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Total: 42 ០១២ 發票"}]},
    ]
    batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.image_token_id) == model.config.mm_tokens_per_image
    assert batch["token_type_ids"][0].sum().item() == model.config.mm_tokens_per_image
    text = tok.decode(ids)
    assert "<start_of_turn>model\nTotal: 42 ០១២ 發票<end_of_turn>" in text
    # the answer's characters have their own tokens (no byte fallback, no <unk>)
    answer_ids = tok("Total: 42 ០១២ 發票", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in answer_ids and len(answer_ids) == len("Total: 42 ០១២ 發票")

    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    prompt = processor.apply_chat_template(messages[:1], tokenize=True, return_dict=True, return_tensors="pt",
                                           add_generation_prompt=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4 or tok.convert_tokens_to_ids("<end_of_turn>") in generated[0].tolist()


def test_tiny_model_is_deterministic_by_seed(tmp_path):
    from safetensors.torch import load_file

    from gemma_ocr.modeling.tiny import build_tiny_gemma3

    a = load_file(build_tiny_gemma3(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_gemma3(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_gemma3(tmp_path / "c", seed=4) / "model.safetensors")
    name = next(k for k in a if k.endswith("q_proj.weight"))
    assert torch.equal(a[name], b[name])
    assert not torch.equal(a[name], c[name])


def test_tiny_model_rejects_inconsistent_geometry(tmp_path):
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.modeling.tiny import build_tiny_gemma3

    with pytest.raises(GemmaOcrError, match="mm_tokens_per_image"):
        build_tiny_gemma3(tmp_path / "x", mm_tokens_per_image=15)
