#!/usr/bin/env python
"""Evaluate an OCR model: CER/F1 per sample and overall.

`gemma-ocr evaluate` runs the same program; its flags: `python core/evaluate.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.evaluate import main

if __name__ == "__main__":
    run(main)
