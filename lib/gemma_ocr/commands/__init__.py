"""The programs of the suite: one module per ``gemma-ocr`` subcommand, each with a ``main()``.

``core/*.py`` and the ``gemma-ocr`` console script (:func:`gemma_ocr.cli.main`) run the same ``main``.
"""
