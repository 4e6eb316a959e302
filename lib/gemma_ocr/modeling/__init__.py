"""Model loading, LoRA target selection and the tiny local Gemma 3 factory."""

from gemma_ocr.modeling.tiny import DEFAULT_TINY_MODEL_DIR, build_tiny_gemma3, ensure_tiny_model

__all__ = ["DEFAULT_TINY_MODEL_DIR", "build_tiny_gemma3", "ensure_tiny_model"]
