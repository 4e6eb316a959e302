"""Merging a LoRA adapter (language and vision towers) into the tiny Gemma 4: verified, and a plain Gemma 4 checkpoint."""

from __future__ import annotations

import json

import pytest

from gemma_ocr.merge.adapter import lora_keys, merge_adapter
from tests.helpers.sft_fixtures import tiny_gemma4_dir  # noqa: F401

GEMMA4_LORA = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
               r"|.*vision_tower.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.linear")


@pytest.fixture(scope="module")
def merged4(tiny_gemma4_dir, tmp_path_factory):  # noqa: F811
    """(folder, MergeReport, adapter folder) of a random-B adapter on both towers of the tiny Gemma 4, merged and verified."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    adapter = tmp_path_factory.mktemp("adapter4") / "gemma-ocr"
    model = AutoModelForImageTextToText.from_pretrained(tiny_gemma4_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=GEMMA4_LORA))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(adapter)
    AutoProcessor.from_pretrained(tiny_gemma4_dir, max_soft_tokens=140).save_pretrained(adapter)
    out = tmp_path_factory.mktemp("merged4") / "merged"
    return out, merge_adapter(adapter, out), adapter


def test_the_merge_equals_base_plus_adapter(merged4):
    out, report, _ = merged4
    assert report.verified and report.lora_keys == 0 and lora_keys(out) == []
    assert report.max_abs_diff <= report.tolerance and report.adapter_effect > 10 * report.max_abs_diff
    assert report.relative_tolerance == 0.1
    assert (report.architecture, report.processor_class) == ("Gemma4ForConditionalGeneration", "Gemma4Processor")


def test_the_merged_folder_is_a_plain_bf16_gemma4_checkpoint(merged4):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out, _, _ = merged4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma4ForConditionalGeneration"] and cfg["model_type"] == "gemma4"
    assert cfg["text_config"]["global_head_dim"] == cfg["text_config"]["head_dim"]
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "Gemma4Processor"
    assert processor_config["image_processor"]["max_soft_tokens"] == 140  # the adapter's budget
    assert (out / "chat_template.jinja").is_file() and (out / "generation_config.json").is_file()
    with safe_open(str(out / "model.safetensors"), framework="pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.bfloat16}
        names = list(st.keys())
    assert any(n.endswith("vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight") for n in names)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "Gemma4ForConditionalGeneration" and type(processor).__name__ == "Gemma4Processor"
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR"}]}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt == "<bos><|turn>user\n<|image|>OCR<turn|>\n<|turn>model\n"


def test_the_check_catches_a_wrong_gemma4_merge(merged4, tiny_gemma4_dir, tmp_path):  # noqa: F811
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.merge.adapter import verify_merge

    out, _, adapter = merged4
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    key = next(k for k in tensors if "language_model" in k and "q_proj.weight" in k)
    tensors[key] = tensors[key] + torch.full_like(tensors[key], 0.05)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GemmaOcrError, match="merged logits differ"):
        verify_merge(str(broken), str(adapter), str(tiny_gemma4_dir))
