#!/usr/bin/env python
"""Build a tiny Gemma 3 or Gemma 4 VLM checkpoint: --pretrain builds the shipped tiny reader (the default model) from random weights.

`gemma-ocr tiny-model` runs the same program; its flags: `python core/make_tiny_model.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.tiny_model import main

if __name__ == "__main__":
    run(main)
