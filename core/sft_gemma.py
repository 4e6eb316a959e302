#!/usr/bin/env python
"""LoRA supervised fine-tuning of a Gemma 3 vision-language model for OCR.

`gemma-ocr train` runs the same program; its flags: `python core/sft_gemma.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.train import main

if __name__ == "__main__":
    run(main)
