"""CRNN models: a CNN backbone, a BiLSTM over image columns, and a CTC or attention head.

Presets (input 32x128 grayscale; parameter counts as built here, seed figures in brackets):

==========  ==============================  ========  ============  ==============
preset      backbone + sequence model       head      parameters    [seed]
==========  ==============================  ========  ============  ==============
lite        VGG-style CNN + BiLSTM 96 (1)   CTC       0.35M         (CPU default)
small       ResNet-18 + BiLSTM 128          attention 12.6M         [12.5M]
medium      ResNet-18 + BiLSTM 256          attention 15.9M         [16.2M]
large       EfficientNet-B0 + BiLSTM 512    attention 30.3M         [30M+]
ctc         ResNet-18 + BiLSTM 128          CTC       12.2M         [12.3M]
ctc_medium  ResNet-18 + BiLSTM 256          CTC       14.3M
(ctc_small is another name for ctc)
==========  ==============================  ========  ============  ==============

CNN strides are set so that a 128-pixel-wide image gives 16 (ResNet, EfficientNet) or 32 (lite)
column features. CTC models emit one distribution per column (``(B, T, vocab)``); attention models
emit ``max_sequence_length`` distributions (``(B, L, vocab)``) from learned position queries that
attend over the columns (a parallel, non-autoregressive decoder). Backbones are built with
``weights=None``: nothing is downloaded.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from gemma_ocr.errors import ModelCreationError
from gemma_ocr.khmer_digits.vocab import MAX_SEQUENCE_LENGTH, VOCAB_SIZE, greedy_decode

log = logging.getLogger(__name__)

DEFAULT_PRESET = "lite"
PRESETS: dict[str, dict[str, Any]] = {
    "lite": dict(backbone="lite", lstm_hidden=96, lstm_layers=1, head="ctc"),
    "small": dict(backbone="resnet18", lstm_hidden=128, head="attention", ffn_mult=1),
    "medium": dict(backbone="resnet18", lstm_hidden=256, head="attention", ffn_mult=1),
    "large": dict(backbone="efficientnet_b0", lstm_hidden=512, head="attention", ffn_mult=4),
    "ctc": dict(backbone="resnet18", lstm_hidden=128, head="ctc"),
    "ctc_small": dict(backbone="resnet18", lstm_hidden=128, head="ctc"),
    "ctc_medium": dict(backbone="resnet18", lstm_hidden=256, head="ctc"),
}
BACKBONES = ("lite", "resnet18", "efficientnet_b0")
HEADS = ("ctc", "attention")


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _lite_backbone(channels: tuple[int, int, int, int] = (16, 32, 64, 96)) -> tuple[nn.Module, int]:
    a, b, c, d = channels
    layers = [
        *_conv_bn_relu(1, a), nn.MaxPool2d(2),
        *_conv_bn_relu(a, b), nn.MaxPool2d(2),
        *_conv_bn_relu(b, c), *_conv_bn_relu(c, c), nn.MaxPool2d((2, 1)),
        *_conv_bn_relu(c, d), *_conv_bn_relu(d, d), nn.MaxPool2d((2, 1)),
    ]
    return nn.Sequential(*layers), d


def _resnet18_backbone() -> tuple[nn.Module, int]:
    # here, not at the top: torchvision takes seconds to import, and only these two presets need it
    from torchvision.models import resnet18

    m = resnet18(weights=None)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for layer in (m.layer3, m.layer4):  # halve the height only: keep columns for the sequence
        layer[0].conv1.stride = (2, 1)
        layer[0].downsample[0].stride = (2, 1)
    return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4), 512


def _efficientnet_b0_backbone() -> tuple[nn.Module, int]:
    from torchvision.models import efficientnet_b0  # torchvision: seconds to import, as above

    features = efficientnet_b0(weights=None).features
    features[0][0] = nn.Conv2d(1, 32, kernel_size=3, stride=2, padding=1, bias=False)
    for stage in (4, 6):  # halve the height only in two of the five downsampling stages
        features[stage][0].block[1][0].stride = (2, 1)
    return features, 1280


class ParallelAttentionDecoder(nn.Module):
    """``max_len`` learned queries attend over the column features; each yields one token."""

    def __init__(self, d_model: int, vocab_size: int, max_len: int, n_frames: int, n_heads: int = 8, ffn_mult: int = 2, dropout: float = 0.1):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.frame_pos = nn.Parameter(torch.zeros(n_frames, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_model * ffn_mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model * ffn_mult, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        memory = memory + self.frame_pos[: memory.shape[1]]
        q = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        x = self.norm1(q + self.attn(q, memory, memory, need_weights=False)[0])
        x = self.norm2(x + self.ffn(x))
        return self.out(x)


class KhmerDigitsOCR(nn.Module):
    """CNN -> column features -> BiLSTM -> CTC or attention head. ``forward`` returns logits."""

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        backbone: str = "lite",
        lstm_hidden: int = 128,
        lstm_layers: int = 2,
        head: str = "ctc",
        ffn_mult: int = 2,
        dropout: float = 0.1,
        image_height: int = 32,
        image_width: int = 128,
        preset: str | None = None,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ModelCreationError(f"unknown backbone {backbone!r} (choose one of {', '.join(BACKBONES)})")
        if head not in HEADS:
            raise ModelCreationError(f"unknown head {head!r} (choose one of {', '.join(HEADS)})")
        self.config = dict(
            vocab_size=vocab_size, max_sequence_length=max_sequence_length, backbone=backbone, lstm_hidden=lstm_hidden,
            lstm_layers=lstm_layers, head=head, ffn_mult=ffn_mult, dropout=dropout, image_height=image_height,
            image_width=image_width, preset=preset,
        )
        build = {"lite": _lite_backbone, "resnet18": _resnet18_backbone, "efficientnet_b0": _efficientnet_b0_backbone}[backbone]
        self.cnn, channels = build()
        with torch.no_grad():
            self.cnn.eval()
            fmap = self.cnn(torch.zeros(1, 1, image_height, image_width))
            self.cnn.train()
        self.n_frames = fmap.shape[-1]
        self.collapse = nn.AdaptiveAvgPool2d((1, None))
        self.rnn = nn.LSTM(channels, lstm_hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True,
                           dropout=dropout if lstm_layers > 1 else 0.0)
        d_model = 2 * lstm_hidden
        self.is_ctc = head == "ctc"
        if self.is_ctc:
            self.head: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, vocab_size))
        else:
            self.head = ParallelAttentionDecoder(d_model, vocab_size, max_sequence_length, self.n_frames,
                                                 n_heads=8, ffn_mult=ffn_mult, dropout=dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.collapse(self.cnn(images)).squeeze(2).permute(0, 2, 1)  # (B, T, C)
        seq, _ = self.rnn(f)
        return self.head(seq)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[str]:
        """Greedy decoding to Khmer-digit strings."""
        return greedy_decode(self(images), ctc=self.is_ctc)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def create_model(
    preset: str = DEFAULT_PRESET,
    vocab_size: int = VOCAB_SIZE,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    **overrides: Any,
) -> KhmerDigitsOCR:
    """Build a preset (see the module table); ``overrides`` change any :class:`KhmerDigitsOCR` argument."""
    if preset not in PRESETS:
        raise ModelCreationError(f"unknown model preset {preset!r} (choose one of {', '.join(PRESETS)})")
    kwargs = {**PRESETS[preset], **overrides}
    try:
        model = KhmerDigitsOCR(vocab_size=vocab_size, max_sequence_length=max_sequence_length, preset=preset, **kwargs)
    except TypeError as e:
        raise ModelCreationError(f"model preset {preset!r}: bad option ({e})") from None
    log.info("model %s: %s + BiLSTM(%d) + %s head, %s parameters", preset, model.config["backbone"],
             model.config["lstm_hidden"], model.config["head"], f"{count_parameters(model):,}")
    return model


def model_from_config(config: dict[str, Any]) -> KhmerDigitsOCR:
    """Rebuild a model from the ``model_config`` stored in a checkpoint."""
    try:
        return KhmerDigitsOCR(**config)
    except TypeError as e:
        raise ModelCreationError(f"checkpoint model_config is not understood ({e})") from None


def describe_presets() -> list[dict[str, Any]]:
    """Each preset with its parts and parameter count (builds every model once)."""
    rows = []
    for name, spec in PRESETS.items():
        model = KhmerDigitsOCR(preset=name, **spec)
        rows.append({"preset": name, **spec, "parameters": count_parameters(model), "frames": model.n_frames})
    return rows
