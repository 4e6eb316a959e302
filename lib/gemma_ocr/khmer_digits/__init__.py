"""The Khmer-digits CRNN baseline backend: data generator, models, losses, metrics, trainer, tuner.

Importing this package is cheap; submodules load torch/torchvision when used.
"""
