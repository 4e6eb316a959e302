#!/usr/bin/env python
"""Serve a merged model behind an OpenAI-compatible API until Ctrl-C (embedded transformers server, or vLLM).

`gemma-ocr serve` runs the same program; its flags: `python core/serve.py --help`.
"""

from gemma_ocr.cli import run
from gemma_ocr.commands.serve import main

if __name__ == "__main__":
    run(main)
