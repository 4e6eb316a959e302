"""Model loading, LoRA target selection, the tiny Gemma 3 factory and the shipped tiny reader."""

from gemma_ocr.modeling.tiny import build_tiny_gemma3, to_hub_layout

__all__ = ["build_tiny_gemma3", "to_hub_layout"]
