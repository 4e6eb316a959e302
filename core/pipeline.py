#!/usr/bin/env python
"""The main job: fine-tune the shipped tiny reader on digits in a font it was not pretrained on; base and fine-tuned side by side.

`gemma-ocr pipeline` runs the same program; its flags: `python core/pipeline.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.pipeline import main

if __name__ == "__main__":
    run(main)
