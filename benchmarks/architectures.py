"""Randomly initialised Gemma 3 checkpoints with the real 4B / 12B architectures, for timing without the weights.

The shapes are those of the public ``google/gemma-3-4b-it`` and ``google/gemma-3-12b-it`` configs
(SigLIP 896 px tower, 256 image tokens, 262208-token vocabulary, 5 sliding-window layers to 1 global,
linear RoPE scaling 8 on the global layers). The tokenizer is the project's small character-level one
(its ids are a subset of the vocabulary), so the saved folder loads through the same
``from_pretrained`` path as a hub checkpoint. Weights are made directly on the target device in bf16.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                          GenerationConfig)

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json
from gemma_ocr.modeling.tiny import CHAT_TEMPLATE, END_OF_TURN, SPECIAL_TOKENS, build_tokenizer, save_atomically

log = logging.getLogger(__name__)

STATS_FILE = "architecture_stats.json"

SIGLIP_896: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 896,
    "patch_size": 14,
    "vision_use_head": False,
    "layer_norm_eps": 1e-6,
}

GEMMA3_TEXT: dict[str, dict[str, Any]] = {
    "4b": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
           "num_attention_heads": 8, "num_key_value_heads": 4},
    "12b": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
            "num_attention_heads": 16, "num_key_value_heads": 8},
}
VOCAB_SIZE = 262208
MM_TOKENS_PER_IMAGE = 256
SLIDING_WINDOW = 1024
SLIDING_WINDOW_PATTERN = 6  # layers 6, 12, ... are global; the 5 before each are sliding-window


def gemma3_config(arch: str, token_ids: dict[str, int], layers: int | None = None):
    """``Gemma3Config`` of the public ``arch`` ("4b" or "12b"); ``token_ids`` maps special tokens to ids.

    ``layers`` keeps only that many layers in each tower (every width, the 896 px images, the 256 image
    tokens and the vocabulary stay real): a shallow model that checks the real shapes quickly, on a CPU too.
    """
    if arch not in GEMMA3_TEXT:
        raise GemmaOcrError(f"unknown Gemma 3 architecture {arch!r}; choose one of {', '.join(GEMMA3_TEXT)}")
    if layers is not None and layers < 1:
        raise GemmaOcrError(f"layers must be >= 1 (got {layers})")
    text = dict(GEMMA3_TEXT[arch])
    vision = dict(SIGLIP_896)
    if layers is not None:
        text["num_hidden_layers"] = min(layers, text["num_hidden_layers"])
        vision["num_hidden_layers"] = min(layers, vision["num_hidden_layers"])
    n_layers = text["num_hidden_layers"]
    text.update(
        vocab_size=VOCAB_SIZE,
        head_dim=256,
        query_pre_attn_scalar=256,
        max_position_embeddings=131072,
        sliding_window=SLIDING_WINDOW,
        layer_types=["full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
                     for i in range(n_layers)],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        },
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        pad_token_id=token_ids["<pad>"],
        eos_token_id=token_ids["<eos>"],
        bos_token_id=token_ids["<bos>"],
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=token_ids["<start_of_image>"],
        eoi_token_index=token_ids["<end_of_image>"],
        image_token_index=token_ids["<image_soft_token>"],
        initializer_range=0.02,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return config


def parameter_stats(model) -> dict[str, Any]:
    """Parameter counts and shapes the FLOP count needs (vision tower, text stack without the embedding, ...)."""
    inner = model.model
    text_cfg, vision_cfg = model.config.get_text_config(), model.config.vision_config
    vision = sum(p.numel() for p in inner.vision_tower.parameters())
    projector = sum(p.numel() for p in inner.multi_modal_projector.parameters())
    embed = inner.language_model.embed_tokens.weight.numel()
    text = sum(p.numel() for p in inner.language_model.parameters()) - embed
    patches_side = vision_cfg.image_size // vision_cfg.patch_size
    return {
        "total_params": sum(p.numel() for p in model.parameters()),
        "vision_params": vision,
        "projector_params": projector,
        "text_params_no_embedding": text,
        "embedding_params": embed,
        "vocab_size": text_cfg.vocab_size,
        "text_hidden": text_cfg.hidden_size,
        "text_layers": text_cfg.num_hidden_layers,
        "text_attn_width": text_cfg.num_attention_heads * text_cfg.head_dim,
        "sliding_window": text_cfg.sliding_window,
        "vision_hidden": vision_cfg.hidden_size,
        "vision_layers": vision_cfg.num_hidden_layers,
        "image_size": vision_cfg.image_size,
        "patches_per_image": patches_side * patches_side,
        "mm_tokens_per_image": model.config.mm_tokens_per_image,
    }


def _processor(tokenizer, image_size: int, image_tokens: int):
    image_processor = Gemma3ImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        do_pan_and_scan=False,
    )
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                           image_seq_length=image_tokens)


def build_random_gemma3(out_dir: str | os.PathLike[str], arch: str = "4b", device: str | None = None,
                        seed: int = 0, layers: int | None = None) -> Path:
    """Write a random-weight Gemma 3 ``arch`` checkpoint (bf16 safetensors, processor, stats) to ``out_dir``.

    ``layers``: a shallow model of the real widths (see :func:`gemma3_config`).

    The model is created on ``device`` (default: CUDA when visible) directly in bf16, so a 4B model takes
    seconds on a GPU; on a CPU it takes minutes and ~2 bytes per parameter of memory.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = gemma3_config(arch, ids, layers)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # the constructor leaves the projector at zero; start it random like a real checkpoint
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
    model.generation_config = GenerationConfig(bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"],
                                               eos_token_id=[ids["<eos>"], ids[END_OF_TURN]], do_sample=False)
    processor = _processor(tokenizer, SIGLIP_896["image_size"], MM_TOKENS_PER_IMAGE)
    out = Path(out_dir)
    stats = parameter_stats(model)
    save_atomically(out, model, processor, overwrite=True)
    atomic_write_json(out / STATS_FILE, {"arch": arch, "layers": layers, **stats})
    log.info("random Gemma 3 %s (%d text, %d vision layers): %.2fB parameters -> %s", arch, stats["text_layers"],
             stats["vision_layers"], stats["total_params"] / 1e9, out)
    del model
    return out
