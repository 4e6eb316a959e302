"""The test suite; tests mirror the package layout of lib/gemma_ocr."""
