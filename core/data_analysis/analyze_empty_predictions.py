#!/usr/bin/env python
"""List the samples of a results file whose prediction is empty, with counts.

`gemma-ocr empty-predictions` runs the same program; its flags: `python core/data_analysis/analyze_empty_predictions.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.empty_predictions import main

if __name__ == "__main__":
    run(main)
