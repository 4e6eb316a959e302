"""Tests of gemma_ocr.scoring."""
