#!/usr/bin/env python
"""Analyse a hyperparameter study: parameter importance, optimization history, parallel coordinates,

`gemma-ocr analyze` runs the same program; its flags: `python core/analyze_hyperparam_results.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.analyze import main

if __name__ == "__main__":
    run(main)
