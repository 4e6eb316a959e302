"""Tests of gemma_ocr.search."""
