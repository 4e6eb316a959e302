"""gemma-ocr: LoRA fine-tuning, hyperparameter search, merging, serving and scoring of Gemma 3 and Gemma 4 OCR models."""

from gemma_ocr.errors import GemmaOcrError

__all__ = ["GemmaOcrError"]
__version__ = "0.1.0"
