"""Tests of gemma_ocr.evaluation."""
