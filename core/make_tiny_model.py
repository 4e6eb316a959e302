#!/usr/bin/env python
"""Build the tiny random Gemma 3 VLM checkpoint (real architecture, processor and chat template) used by default.

`gemma-ocr tiny-model` runs the same program; its flags: `python core/make_tiny_model.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.tiny_model import main

if __name__ == "__main__":
    run(main)
