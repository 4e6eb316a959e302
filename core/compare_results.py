#!/usr/bin/env python
"""Compare models on the same test set: differences with paired bootstrap 95% intervals, a paired significance
test, better/worse/same, overall and per slice.

`gemma-ocr compare` runs the same program; its flags: `python core/compare_results.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.compare import main

if __name__ == "__main__":
    run(main)
