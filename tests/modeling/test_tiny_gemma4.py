"""The tiny Gemma 4 checkpoint loads through the Auto classes like a hub checkpoint, runs, and takes every budget."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests.helpers.sft_fixtures import ROOT, sft_env, tiny_gemma4_dir  # noqa: F401

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "請給我 OCR 結果"}]}]


def test_tiny_gemma4_reloads_with_auto_classes_and_generates(tiny_gemma4_dir):  # noqa: F811
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = json.loads((tiny_gemma4_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma4ForConditionalGeneration"] and config["model_type"] == "gemma4"
    text, vision = config["text_config"], config["vision_config"]
    assert text["global_head_dim"] == text["head_dim"] and text["hidden_size_per_layer_input"] == 0
    assert not text["enable_moe_block"] and config.get("audio_config") is None
    assert vision["pooling_kernel_size"] == 2 and vision["default_output_length"] == 70
    assert sum(p.stat().st_size for p in tiny_gemma4_dir.iterdir()) < 10 * 2**20

    processor = AutoProcessor.from_pretrained(tiny_gemma4_dir)
    model, info = AutoModelForImageTextToText.from_pretrained(tiny_gemma4_dir, output_loading_info=True)
    assert type(processor).__name__ == "Gemma4Processor" and type(model).__name__ == "Gemma4ForConditionalGeneration"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    from safetensors import safe_open

    with safe_open(str(tiny_gemma4_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert all(n.startswith(("model.vision_tower.", "model.embed_vision.", "model.language_model.")) for n in names)
    assert any(n.endswith("self_attn.q_proj.linear.weight") for n in names)

    image = Image.new("RGB", (120, 40), "white")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, PROMPT[0]["content"][1]]},
                {"role": "assistant", "content": [{"type": "text", "text": "Total: 42 ០១២ 發票"}]}]
    batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_position_ids"}
    tok = processor.tokenizer
    ids = batch["input_ids"][0]
    assert ids[0].item() == tok.bos_token_id and (ids == tok.bos_token_id).sum() == 1
    assert (batch["mm_token_type_ids"][0] == (ids == tok.image_token_id).long()).all()
    assert "<|turn>model\nTotal: 42 ០១២ 發票<turn|>" in tok.decode(ids)
    with torch.no_grad():
        assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)
    prompt = processor.apply_chat_template([messages[0]], tokenize=True, return_dict=True, return_tensors="pt",
                                           add_generation_prompt=True)
    generated = model.generate(**prompt, max_new_tokens=4)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_chat_template_turns_system_and_thinking(tiny_gemma4_dir):  # noqa: F811
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_gemma4_dir)
    render = lambda messages, **kw: processor.apply_chat_template(messages, tokenize=False, **kw)  # noqa: E731
    assert render(PROMPT, add_generation_prompt=True) == "<bos><|turn>user\n<|image|>請給我 OCR 結果<turn|>\n<|turn>model\n"
    system = [{"role": "system", "content": "You read text."}, *PROMPT]
    assert render(system).startswith("<bos><|turn>system\nYou read text.<turn|>\n<|turn>user\n<|image|>")
    thinking = render(PROMPT, add_generation_prompt=True, enable_thinking=True)
    assert thinking.startswith("<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\n")
    answer = [*PROMPT, {"role": "assistant", "content": "<|channel>thought\nhm<channel|>HELLO"}]
    assert render(answer).endswith("<|turn>model\nHELLO<turn|>\n")


def test_tiny_gemma4_is_deterministic_by_seed(tmp_path):
    from safetensors.torch import load_file

    from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4

    a, b, c = (load_file(build_tiny_gemma4(tmp_path / name, seed=seed) / "model.safetensors")
               for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    name = next(k for k in a if k.endswith("q_proj.weight"))
    assert not torch.equal(a[name], c[name])


def test_the_budget_sets_the_number_of_image_tokens(tiny_gemma4_dir, tmp_path):  # noqa: F811
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_gemma4_dir).eval()
    image = Image.new("RGB", (120, 40), "white")
    counts = []
    for budget in (70, 140, 280):
        processor = AutoProcessor.from_pretrained(tiny_gemma4_dir, max_soft_tokens=budget)
        text = processor.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
        batch = processor(text=[text], images=[[image]], return_tensors="pt")
        count = int((batch["input_ids"] == processor.tokenizer.image_token_id).sum())
        assert 0 < count <= budget
        counts.append(count)
        with torch.no_grad():  # one checkpoint takes every budget
            assert torch.isfinite(model(**batch).logits).all()
    assert counts[0] < counts[1] < counts[2], counts
    processor.save_pretrained(tmp_path / "p")
    assert AutoProcessor.from_pretrained(tmp_path / "p").image_processor.max_soft_tokens == 280


def test_make_tiny_model_family_gemma4(tmp_path):
    out = tmp_path / "random4"
    proc = subprocess.run([sys.executable, str(ROOT / "core/make_tiny_model.py"), "--family", "gemma4",
                           "--output-dir", str(out)], capture_output=True, text=True, env=sft_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "tiny Gemma 4" in proc.stdout
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Gemma4ForConditionalGeneration"]
    bad = subprocess.run([sys.executable, str(ROOT / "core/make_tiny_model.py"), "--family", "gemma3n",
                          "--output-dir", str(tmp_path / "x")], capture_output=True, text=True, env=sft_env(),
                         timeout=180)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_an_unsupported_budget_is_one_line(tmp_path):
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4

    with pytest.raises(GemmaOcrError, match="takes one of 70, 140, 280, 560, 1120"):
        build_tiny_gemma4(tmp_path / "x", image_token_budget=100)
