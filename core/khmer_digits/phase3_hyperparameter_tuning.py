#!/usr/bin/env python
"""Run the Khmer-digits CNN experiments of a YAML file and write a results JSON (best_result, all_results).

`gemma-ocr khmer tune` runs the same program; its flags: `python core/khmer_digits/phase3_hyperparameter_tuning.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.khmer_tune import main

if __name__ == "__main__":
    run(main)
