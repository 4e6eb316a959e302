"""Tests of gemma_ocr.serving."""
