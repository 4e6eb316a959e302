#!/usr/bin/env python
"""Split data/raw_data/ocr.json into data/input/ocr_non_test.json (1/6) and data/input/ocr_test.json (5/6), seed 42.

`gemma-ocr split` runs the same program; its flags: `python core/split_dataset.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.split import main

if __name__ == "__main__":
    run(main)
