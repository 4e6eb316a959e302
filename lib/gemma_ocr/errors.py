"""The one exception hierarchy: every error a user can cause and fix is a :class:`GemmaOcrError`."""

from __future__ import annotations


class GemmaOcrError(Exception):
    """A user-fixable problem: bad input file, bad flag, unreachable server.

    The message is one line that names the file/field and says how to fix it.
    Command-line programs print it without a traceback (see :mod:`gemma_ocr.cli`).
    """


class ConfigurationError(GemmaOcrError):
    """A Khmer-digits experiment configuration is invalid or lacks a required field."""


class ExperimentFailedError(GemmaOcrError):
    """A Khmer-digits experiment failed while it ran."""


class ModelCreationError(GemmaOcrError):
    """A Khmer-digits model could not be built (unknown preset, bad model option)."""


class DataLoaderError(GemmaOcrError):
    """Khmer-digits data could not be loaded (missing metadata, unreadable image, label outside the vocabulary)."""
