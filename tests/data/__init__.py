"""Tests of gemma_ocr.data."""
