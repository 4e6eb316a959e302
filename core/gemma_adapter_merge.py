#!/usr/bin/env python
"""Merge a LoRA adapter into its Gemma 3 base as a 16-bit checkpoint that vLLM and transformers load, then verify it.

`gemma-ocr merge` runs the same program; its flags: `python core/gemma_adapter_merge.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.merge import main

if __name__ == "__main__":
    run(main)
