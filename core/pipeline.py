#!/usr/bin/env python
"""The main job on the embedded defaults: synthetic data -> split -> search -> LoRA SFT -> merge -> serve -> evaluate, CER/F1 side by side.

`gemma-ocr pipeline` runs the same program; its flags: `python core/pipeline.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.pipeline import main

if __name__ == "__main__":
    run(main)
