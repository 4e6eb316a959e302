"""``python -m gemma_ocr <command> ...``: the ``gemma-ocr`` console script."""

from gemma_ocr.cli import main

main()
