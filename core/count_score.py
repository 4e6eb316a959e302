#!/usr/bin/env python
"""Recompute CER/F1 of a results file on normalized text, with 95% bootstrap intervals and per-slice figures.

`gemma-ocr count-score` runs the same program; its flags: `python core/count_score.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.count_score import main

if __name__ == "__main__":
    run(main)
