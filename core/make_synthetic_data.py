#!/usr/bin/env python
"""Render synthetic OCR text lines with real fonts into data/raw_data/ (images/ + ocr.json).

`gemma-ocr synth` runs the same program; its flags: `python core/make_synthetic_data.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.synth import main

if __name__ == "__main__":
    run(main)
