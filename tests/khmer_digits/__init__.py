"""Tests of gemma_ocr.khmer_digits."""
