#!/usr/bin/env python
"""Turn folders of images with .gt.txt/.txt transcriptions, or .tsv/.csv/.jsonl/.parquet labels files, into data/raw_data/ocr.json.

`gemma-ocr import` runs the same program; its flags: `python core/import_ocr_data.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.import_data import main

if __name__ == "__main__":
    run(main)
