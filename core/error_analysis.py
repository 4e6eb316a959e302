#!/usr/bin/env python
"""Where a model's character errors are: a report of one evaluation results file, optionally against a baseline's.

`gemma-ocr errors` runs the same program; its flags: `python core/error_analysis.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.error_analysis import main

if __name__ == "__main__":
    run(main)
