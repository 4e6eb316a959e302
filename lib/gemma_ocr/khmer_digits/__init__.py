"""The Khmer-digits CRNN baseline backend: data generator, models, losses, metrics, trainer, tuner.

Importing this package is cheap; submodules load torch/torchvision when used.
"""

from gemma_ocr.khmer_digits.exceptions import ConfigurationError, DataLoaderError, ExperimentFailedError, ModelCreationError

__all__ = ["ConfigurationError", "DataLoaderError", "ExperimentFailedError", "ModelCreationError"]
