"""The one exception type for errors a user can cause and fix."""

from __future__ import annotations


class GemmaOcrError(Exception):
    """A user-fixable problem: bad input file, bad flag, unreachable server.

    The message is one line that names the file/field and says how to fix it.
    Command-line programs print it without a traceback (see :mod:`gemma_ocr.cli`).
    """
