"""The tiny Gemma 3 checkpoint loads through the Auto classes like a hub checkpoint and runs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.helpers.sft_fixtures import tiny_model_dir  # noqa: F401


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


HUB_PREFIXES = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.")


def saved_weight_names(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_tiny_model_is_saved_with_the_hub_weight_names(tiny_model_dir):  # noqa: F811
    """vLLM's Gemma 3 loader maps the hub's names (vision_tower.vision_model.*); transformers 5 saves others."""
    from transformers import AutoModelForImageTextToText

    names = saved_weight_names(tiny_model_dir)
    assert names and all(n.startswith(HUB_PREFIXES) for n in names), [n for n in names if not n.startswith(HUB_PREFIXES)]
    assert any(n.startswith("vision_tower.vision_model.encoder.layers.") for n in names)
    model, info = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    from safetensors.torch import load_file

    saved = load_file(str(tiny_model_dir / "model.safetensors"))
    patch = model.model.vision_tower.embeddings.patch_embedding.weight
    assert torch.equal(patch, saved["vision_tower.vision_model.embeddings.patch_embedding.weight"])


def test_to_hub_layout_renames_transformers_names_once(tmp_path):
    from safetensors.torch import load_file, save_file

    from gemma_ocr.modeling.tiny import to_hub_layout

    save_file({"vision_tower.embeddings.patch_embedding.weight": torch.ones(2),
               "language_model.model.norm.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert to_hub_layout(tmp_path) == 1
    assert sorted(load_file(str(tmp_path / "model.safetensors"))) == [
        "language_model.model.norm.weight", "vision_tower.vision_model.embeddings.patch_embedding.weight"]
    assert to_hub_layout(tmp_path) == 0  # already in hub layout


def test_tokenizer_holds_gemmas_newline_run_tokens(tiny_model_dir):  # noqa: F811
    """vLLM's Gemma 3 processor looks up "\\n" to "\\n\\n\\n\\n" for every image prompt; runs tokenize as one token."""
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    vocab = tok.get_vocab()
    for n in range(1, 32):
        assert "\n" * n in vocab, n
    for n in (2, 3, 4, 7):
        assert tok("\n" * n, add_special_tokens=False)["input_ids"] == [vocab["\n" * n]]
    ids = tok("12\n\n34", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["1", "2", "\n\n", "3", "4"] and tok.decode(ids) == "12\n\n34"
