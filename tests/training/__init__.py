"""Tests of gemma_ocr.training."""
