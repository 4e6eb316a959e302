#!/usr/bin/env python
"""Statistics and plots of the train/test split: label lengths, character frequencies, image sizes.

`gemma-ocr data-stats` runs the same program; its flags: `python core/data_analysis/train_test_data.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.data_stats import main

if __name__ == "__main__":
    run(main)
