"""Tests of gemma_ocr.merge."""
