"""Tests of gemma_ocr.pipeline."""
