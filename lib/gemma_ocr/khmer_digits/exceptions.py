"""Error types of the Khmer-digits backend.

All of them are :class:`gemma_ocr.errors.GemmaOcrError`, so a command-line program ends on one
clear line instead of a traceback.
"""

from __future__ import annotations

from gemma_ocr.errors import GemmaOcrError


class ConfigurationError(GemmaOcrError):
    """A configuration is invalid or lacks a required field."""


class ExperimentFailedError(GemmaOcrError):
    """An experiment failed while it ran."""


class ModelCreationError(GemmaOcrError):
    """A model could not be built (unknown preset, bad model option)."""


class DataLoaderError(GemmaOcrError):
    """Data could not be loaded (missing metadata, unreadable image, label outside the vocabulary)."""
