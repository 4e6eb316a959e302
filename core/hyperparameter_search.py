#!/usr/bin/env python
"""Search LoRA fine-tuning hyperparameters with Optuna (TPE, random or grid), with median pruning.

`gemma-ocr search` runs the same program; its flags: `python core/hyperparameter_search.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.search import main

if __name__ == "__main__":
    run(main)
