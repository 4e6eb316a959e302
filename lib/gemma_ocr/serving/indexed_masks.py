"""Gemma 3 attention masks built by broadcasting rather than with ``torch.vmap``, for the embedded server
(:func:`use_indexed_masks`): the same masks, a third of a one-at-a-time request's CPU less."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

INDEXED_SDPA = "sdpa_indexed"  # SDPA attention whose masks are built by broadcasting (no torch.vmap)
INDEXED_MASK_MODELS = ("gemma3",)  # whose mask functions are all index-based (causal, sliding window, image blocks)


def _indexed_sdpa_mask(*args: Any, use_vmap: bool = False, **kwargs: Any) -> torch.Tensor | None:
    """transformers' SDPA mask, built by broadcasting its mask function over index tensors."""
    return sdpa_mask(*args, use_vmap=False, **kwargs)


def use_indexed_masks(model: Any) -> bool:
    """Have a Gemma 3 model on SDPA attention build its masks by broadcasting instead of ``torch.vmap``.

    transformers turns vmap on whenever a model composes its own mask functions, as Gemma 3 does for its
    sliding-window layers (the image block overlay): about 5 ms of every prefill on a CPU, a third of a
    one-at-a-time request to the tiny reader. Gemma 3's mask functions are index-based, so broadcasting
    builds the same masks. Returns whether the model was switched (other models stay as they are)."""
    config = model.config
    if config.model_type not in INDEXED_MASK_MODELS or config._attn_implementation not in ("sdpa", INDEXED_SDPA):
        return False
    AttentionInterface.register(INDEXED_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(INDEXED_SDPA, _indexed_sdpa_mask)
    if config._attn_implementation != INDEXED_SDPA:
        model.set_attn_implementation(INDEXED_SDPA)
    return True
