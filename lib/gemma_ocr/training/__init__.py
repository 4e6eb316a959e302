"""LoRA supervised fine-tuning of Gemma 3 for OCR: data, collator, tracking and ``tune()``."""

from gemma_ocr.modeling.loading import load_model
from gemma_ocr.training.data import OcrCollator, build_conversation, load_data
from gemma_ocr.training.tune import CONFIG_FILE, METRICS_FILE, tune

__all__ = ["CONFIG_FILE", "METRICS_FILE", "OcrCollator", "build_conversation", "load_data", "load_model", "tune"]
