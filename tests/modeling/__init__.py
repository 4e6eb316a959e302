"""Tests of gemma_ocr.modeling."""
