"""Tests of gemma_ocr.reports."""
