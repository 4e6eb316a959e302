"""Randomly initialised Gemma 3 and Gemma 4 checkpoints with the real architectures, for timing without the weights.

Gemma 3 4B / 12B: the shapes of the public ``google/gemma-3-4b-it`` and ``google/gemma-3-12b-it`` configs
(SigLIP 896 px tower, 256 image tokens, 262208-token vocabulary, 5 sliding-window layers to 1 global,
linear RoPE scaling 8 on the global layers).

Gemma 4 E2B / E4B (``GEMMA4_TEXT``, ``GEMMA4_VISION``): the ``gemma-4-e2b`` / ``gemma-4-e4b`` variants of
transformers' ``convert_gemma4_weights.py`` (not installed here; read from huggingface/transformers), which
agree with /work/notes/gemma4.md. Text: E2B 1536 hidden x 35 layers (4 sliding to 1 global), 8 heads, 1 key/value
head, MLP 4 x 1536 (double width on the 20 KV-shared layers); E4B 2560 x 42 (5 to 1), 8 heads, 2 key/value heads,
MLP 4 x 2560, 18 KV-shared layers. Both: per-layer embeddings 256, global heads 512 wide (E4B explicit, E2B the
``global_head_dim`` default), logit softcap 30, and the installed ``Gemma4TextConfig`` defaults for the rest
(262144-token vocabulary, head_dim 256, window 512, RoPE 1e4 sliding / 1e6 proportional 0.25 global). Vision
(both): 768 hidden x 16 layers, 12 heads, MLP 3072, patch 16, pooling 3, clipped linears, 280 image tokens
(``default_output_length``), position table 10240 (the ``Gemma4VisionConfig`` default). Audio: the installed
``Gemma4AudioConfig`` defaults, as the script uses; with it the totals are the published ~5.1B and ~8B
(``audio=True``). The benchmark builds it too, as the real checkpoints hold it (0.3B parameters of memory that OCR
never runs); the project's loader gives it eager attention, the only kind transformers' Gemma 4 audio model takes.

The tokenizer is the project's small character-level one (its ids are a subset of the vocabulary), so the saved
folder loads through the same ``from_pretrained`` path as a hub checkpoint. Weights are made directly on the
target device in bf16.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                          Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, GenerationConfig)

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json
from gemma_ocr.modeling import tiny_gemma4
from gemma_ocr.modeling.families import GEMMA4, family_of
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
    if family_of(model.config) is GEMMA4:
        return gemma4_parameter_stats(model)
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
        "images": f"{vision_cfg.image_size} px images",
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


def random_bf16(model_class: type, config: Any, device: str, seed: int) -> Any:
    """``model_class(config)`` with random weights made on ``device`` directly in bf16."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return model_class(config)
    finally:
        torch.set_default_dtype(previous)


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
    model = random_bf16(Gemma3ForConditionalGeneration, config, device, seed)
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


# ------------------------------------------------------------------------------------------ Gemma 4

GEMMA4_TEXT: dict[str, dict[str, Any]] = {
    "e2b": {"hidden_size": 1536, "intermediate_size": 4 * 1536, "num_hidden_layers": 35, "num_attention_heads": 8,
            "num_key_value_heads": 1, "num_kv_shared_layers": 20, "use_double_wide_mlp": True, "pattern": 5},
    "e4b": {"hidden_size": 2560, "intermediate_size": 4 * 2560, "num_hidden_layers": 42, "num_attention_heads": 8,
            "num_key_value_heads": 2, "num_kv_shared_layers": 18, "use_double_wide_mlp": False, "pattern": 6},
}
GEMMA4_VISION: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 16, "num_attention_heads": 12,
    "num_key_value_heads": 12, "head_dim": 64, "patch_size": 16, "pooling_kernel_size": 3,
    "use_clipped_linears": True, "default_output_length": 280,
}
GEMMA4_PER_LAYER_INPUT = 256
GEMMA4_GLOBAL_HEAD_DIM = 512


def gemma4_layer_plan(arch: str, layers: int | None = None) -> tuple[list[str], int]:
    """The text layer types of ``arch`` (its first ``layers``, the last always global) and its KV-shared layers.

    A shallow model keeps the real share of KV-shared layers, as long as the layers before them hold both layer
    types (transformers requires a producer of each kind of cache).
    """
    real = GEMMA4_TEXT[arch]
    n_real, pattern = real["num_hidden_layers"], real["pattern"]
    n = n_real if layers is None else min(layers, n_real)
    types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    types[-1] = "full_attention"
    first_global = types.index("full_attention") + 1
    shared = min(round(n * real["num_kv_shared_layers"] / n_real), n - first_global)
    return types, max(shared, 0)


def gemma4_config(arch: str, token_ids: dict[str, int], layers: int | None = None, audio: bool = False):
    """``Gemma4Config`` of the public ``arch`` ("e2b" or "e4b"); ``token_ids`` maps special tokens to ids.

    ``layers`` keeps only that many layers in each tower (widths, vocabulary, per-layer embeddings, the 280-token
    budget and the share of KV-shared layers stay real): the Gemma 4 counterpart of :func:`gemma3_config`.
    ``audio``: with the real checkpoints' audio tower.
    """
    if arch not in GEMMA4_TEXT:
        raise GemmaOcrError(f"unknown Gemma 4 architecture {arch!r}; choose one of {', '.join(GEMMA4_TEXT)}")
    if layers is not None and layers < 1:
        raise GemmaOcrError(f"layers must be >= 1 (got {layers})")
    text = {k: v for k, v in GEMMA4_TEXT[arch].items() if k != "pattern"}
    layer_types, shared = gemma4_layer_plan(arch, layers)
    text.update(num_hidden_layers=len(layer_types), layer_types=layer_types, num_kv_shared_layers=shared,
                hidden_size_per_layer_input=GEMMA4_PER_LAYER_INPUT, global_head_dim=GEMMA4_GLOBAL_HEAD_DIM,
                attention_k_eq_v=False, use_bidirectional_attention=None, enable_moe_block=False,
                final_logit_softcapping=30.0, pad_token_id=token_ids["<pad>"], eos_token_id=token_ids["<eos>"],
                bos_token_id=token_ids["<bos>"])
    vision = dict(GEMMA4_VISION)
    audio_config = Gemma4AudioConfig() if audio else None
    if layers is not None:
        vision["num_hidden_layers"] = min(layers, vision["num_hidden_layers"])
        if audio_config is not None:
            audio_config.num_hidden_layers = min(layers, audio_config.num_hidden_layers)
    t = tiny_gemma4
    config = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=audio_config,
        image_token_id=token_ids[t.IMAGE_TOKEN], boi_token_id=token_ids[t.BOI_TOKEN],
        eoi_token_id=token_ids[t.EOI_TOKEN], audio_token_id=token_ids[t.AUDIO_TOKEN],
        boa_token_id=token_ids[t.BOA_TOKEN], eoa_token_index=token_ids[t.EOA_TOKEN],
        video_token_id=token_ids[t.VIDEO_TOKEN], initializer_range=0.02,
    )
    config.text_config.global_head_dim = GEMMA4_GLOBAL_HEAD_DIM  # config.json keeps it only when set (vLLM reads it)
    config.architectures = [GEMMA4.architecture]
    return config


def gemma4_parameter_stats(model) -> dict[str, Any]:
    """:func:`parameter_stats` of a Gemma 4 model (per-layer embeddings counted as embeddings: a lookup)."""
    inner = model.model
    text_cfg, vision_cfg = model.config.get_text_config(), model.config.vision_config
    language = inner.language_model
    embed = language.embed_tokens.weight.numel()
    per_layer = language.embed_tokens_per_layer.weight.numel() if text_cfg.hidden_size_per_layer_input else 0
    widths = [layer.self_attn.head_dim * text_cfg.num_attention_heads for layer in language.layers]
    budget = vision_cfg.default_output_length
    audio = getattr(inner, "audio_tower", None)
    return {
        "total_params": sum(p.numel() for p in model.parameters()),
        "vision_params": sum(p.numel() for p in inner.vision_tower.parameters()),
        "projector_params": sum(p.numel() for p in inner.embed_vision.parameters()),
        "audio_params": sum(p.numel() for p in audio.parameters()) if audio is not None else 0,
        "text_params_no_embedding": sum(p.numel() for p in language.parameters()) - embed - per_layer,
        "embedding_params": embed,
        "per_layer_embedding_params": per_layer,
        "vocab_size": text_cfg.vocab_size,
        "text_hidden": text_cfg.hidden_size,
        "text_layers": text_cfg.num_hidden_layers,
        "kv_shared_layers": text_cfg.num_kv_shared_layers,
        "text_attn_width": sum(widths) / len(widths),  # mean: global layers have wider heads
        "sliding_window": text_cfg.sliding_window,
        "vision_hidden": vision_cfg.hidden_size,
        "vision_layers": vision_cfg.num_hidden_layers,
        "image_size": None,
        "images": f"any-size images at {budget} image tokens",
        "patches_per_image": budget * vision_cfg.pooling_kernel_size ** 2,  # padded to the budget's patches
        "mm_tokens_per_image": budget,
    }


def build_random_gemma4(out_dir: str | os.PathLike[str], arch: str = "e2b", device: str | None = None,
                        seed: int = 0, layers: int | None = None) -> Path:
    """Write a random-weight Gemma 4 ``arch`` checkpoint (bf16 safetensors, processor, stats) to ``out_dir``.

    The counterpart of :func:`build_random_gemma3`; the processor is the project's Gemma 4 one (chat template,
    small tokenizer) at the real patch 16, pooling 3 and 280-token budget.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = tiny_gemma4.build_gemma4_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tiny_gemma4.SPECIAL_TOKENS}
    config = gemma4_config(arch, ids, layers, audio=True)
    model = random_bf16(Gemma4ForConditionalGeneration, config, device, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"], do_sample=False,
        eos_token_id=[ids["<eos>"], ids[tiny_gemma4.END_OF_TURN]])
    vision = config.vision_config
    processor = tiny_gemma4.tiny_gemma4_processor(tokenizer, vision.patch_size, vision.default_output_length,
                                                  vision.pooling_kernel_size)
    out = Path(out_dir)
    stats = parameter_stats(model)
    save_atomically(out, model, processor, overwrite=True)
    atomic_write_json(out / STATS_FILE, {"arch": f"gemma4-{arch}", "layers": layers, **stats})
    log.info("random Gemma 4 %s (%d text, %d vision layers): %.2fB parameters -> %s", arch, stats["text_layers"],
             stats["vision_layers"], stats["total_params"] / 1e9, out)
    del model
    return out


#: The benchmark's ``--arch`` names of the real-width architectures: (builder, the builder's arch).
ARCHITECTURES = {"4b": (build_random_gemma3, "4b"), "12b": (build_random_gemma3, "12b"),
                 "gemma4-e2b": (build_random_gemma4, "e2b"), "gemma4-e4b": (build_random_gemma4, "e4b")}


def build_random(out_dir: str | os.PathLike[str], arch: str, seed: int = 0, layers: int | None = None) -> Path:
    """Build the ``--arch`` ``arch`` (a key of :data:`ARCHITECTURES`) into ``out_dir``."""
    builder, name = ARCHITECTURES[arch]
    return builder(out_dir, name, seed=seed, layers=layers)
