#!/usr/bin/env python
"""Render Khmer-digit sequence images (1-8 digits, Noto Sans Khmer) with train/val splits and metadata.yaml.

`gemma-ocr khmer generate` runs the same program; its flags: `python core/khmer_digits/generate_data.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.khmer_generate import main

if __name__ == "__main__":
    run(main)
