#!/usr/bin/env python
"""Transcribe images with a served OCR model into a JSON Lines file (one row per image: text, status).

`gemma-ocr transcribe` runs the same program; its flags: `python core/transcribe.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.transcribe import main

if __name__ == "__main__":
    run(main)
