"""Model loading: the family check, dtype, 4-bit nf4, LoRA target selection, clear errors for 4-bit/unsloth."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from gemma_ocr.training.config import TrainConfig
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.modeling import loading
from gemma_ocr.modeling.families import family_of
from gemma_ocr.modeling.loading import load_base_model, load_model, lora_target_regex
from tests.helpers.sft_fixtures import needs_4bit, tiny_model_dir  # noqa: F401


def _lora_modules(model) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A")}


def test_default_targets_language_attention_and_mlp_only(tiny_model_dir):  # noqa: F811
    model, processor = load_model(TrainConfig(model_name=str(tiny_model_dir)))
    names = _lora_modules(model)
    assert names and all(".language_model." in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"}
    assert next(model.parameters()).dtype == torch.float32  # CPU: fp32, never fp16
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert processor.tokenizer.pad_token is not None


def test_vision_attention_only_and_projector(tiny_model_dir):  # noqa: F811
    config = TrainConfig(model_name=str(tiny_model_dir), finetune_vision_layers=True, finetune_language_layers=False,
                         finetune_mlp_modules=False, finetune_multimodal_projector=True)
    model, _ = load_model(config)
    names = _lora_modules(model)
    assert names and all(".vision_tower." in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in n and "lora_" not in n for n in trainable)


def test_explicit_target_modules_regex(tiny_model_dir):  # noqa: F811
    regex = lora_target_regex(TrainConfig(model_name=str(tiny_model_dir), lora_target_modules=["q_proj", "v_proj"]))
    import re

    assert re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(regex, "model.language_model.layers.0.self_attn.o_proj")


def test_not_a_supported_vlm_is_one_line(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(GemmaOcrError, match="is not a supported vision-language model") as err:
        family_of(str(folder))
    assert "\n" not in str(err.value)
    text_only = tmp_path / "gemma3-text"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(GemmaOcrError, match="not a supported vision-language model"):
        family_of(str(text_only))
    with pytest.raises(GemmaOcrError, match="has no config.json"):
        family_of(str(tmp_path))


def test_4bit_unavailable_is_one_clear_line(tiny_model_dir, monkeypatch):  # noqa: F811
    config = TrainConfig(model_name=str(tiny_model_dir), load_in_4bit=True)
    monkeypatch.setattr(loading, "_bitsandbytes_version", lambda: None)
    with pytest.raises(GemmaOcrError, match=r"load_in_4bit needs bitsandbytes: pip install 'gemma-ocr\[gpu\]'"):
        load_base_model(config)
    if not torch.cuda.is_available():
        monkeypatch.setattr(loading, "_bitsandbytes_version", lambda: "0.45.5")
        with pytest.raises(GemmaOcrError, match=r"without a CUDA GPU needs bitsandbytes >= 0.48 \(found 0.45.5\)"):
            load_base_model(config)


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None,
                    reason="unsloth usable here")
def test_unsloth_unavailable_is_a_clear_error(tiny_model_dir):  # noqa: F811
    with pytest.raises(GemmaOcrError, match="backend 'unsloth'"):
        load_model(TrainConfig(model_name=str(tiny_model_dir), backend="unsloth"))
    # tune() checks (and imports) unsloth first, before reading any data
    from gemma_ocr.training.tune import tune

    with pytest.raises(GemmaOcrError, match="backend 'unsloth'"):
        tune(TrainConfig(model_name=str(tiny_model_dir), backend="unsloth", input_data="/nonexistent/data.json"))


@needs_4bit
def test_4bit_nf4_double_quant_bf16_compute(tiny_model_dir):  # noqa: F811
    model, _ = load_model(TrainConfig(model_name=str(tiny_model_dir), load_in_4bit=True))
    qc = model.base_model.model.config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    assert qc["load_in_4bit"] and qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"]
    assert qc["bnb_4bit_compute_dtype"] in ("bfloat16", torch.bfloat16)
    assert any(p.dtype == torch.uint8 for p in model.parameters())


@needs_4bit
def test_lean_4bit_keeps_bf16_where_plain_peft_upcasts_to_fp32(tiny_model_dir):  # noqa: F811
    from bitsandbytes.nn import Linear4bit

    def dtypes(model, part: str) -> set[torch.dtype]:
        return {p.dtype for n, p in model.named_parameters() if part in n and "lora_" not in n}

    lean, _ = load_model(TrainConfig(model_name=str(tiny_model_dir), load_in_4bit=True))
    plain, _ = load_model(TrainConfig(model_name=str(tiny_model_dir), load_in_4bit=True, fast_path=False))
    for part in ("embed_tokens", "input_layernorm", "multi_modal_projector", "post_layernorm"):
        assert dtypes(lean, part) == {torch.bfloat16}, part  # no fp32 copy of the 262k-row embedding on a 4B model
        assert dtypes(plain, part) == {torch.float32}, part  # prepare_model_for_kbit_training's upcast
    for model in (lean, plain):
        q_proj = next(m for n, m in model.named_modules() if n.endswith("language_model.layers.0.self_attn.q_proj"))
        assert isinstance(q_proj.base_layer, Linear4bit) and q_proj.base_layer.weight.dtype == torch.uint8
        assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


def test_4bit_layers_keep_their_gradient_after_an_evaluation():
    """An eval pass without gradients must not repack a CPU nf4 layer into bitsandbytes' inference-only layout."""
    bnb = pytest.importorskip("bitsandbytes")
    from gemma_ocr.modeling.loading import keep_4bit_layout_trainable

    torch.manual_seed(0)
    layers = torch.nn.Sequential(*(bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
                                   for n_in, n_out in ((128, 64), (32, 32))))  # 32 inputs: below one quantisation block
    for layer in layers:
        layer.weight = bnb.nn.Params4bit(torch.randn(layer.out_features, layer.in_features), requires_grad=False,
                                         quant_type="nf4", module=layer)
    layers = layers.to("cpu")  # quantises the weights
    keep_4bit_layout_trainable(layers)
    for layer, n_in in zip(layers, (128, 32)):
        layer.eval()
        with torch.no_grad():
            layer(torch.randn(2, n_in))
        layer.train()
        x = torch.randn(2, n_in, requires_grad=True)
        layer(x).float().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
