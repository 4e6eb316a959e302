"""Loss functions for the OCR models.

All take ``logits`` from a model and padded ``targets`` ``(B, max_sequence_length)`` (digits, EOS,
PAD) as the dataset yields them:

* :class:`CrossEntropyLoss` (attention models): token cross-entropy, PAD positions ignored,
  optional label smoothing. EOS is a target, so the model learns where a sequence ends.
* :class:`CTCLoss` (CTC models): logits ``(B, T, V)``; the digits of each target row are the label
  sequence (EOS/PAD dropped); blank is index 12.
* :class:`FocalLoss` (attention models): ``alpha_t * (1 - p_t)^gamma * CE``, PAD ignored.
* :class:`OCRLoss`: picks one of them by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gemma_ocr.errors import ConfigurationError
from gemma_ocr.khmer_digits.vocab import BLANK_IDX, PAD_IDX, VOCAB_SIZE, target_lengths

LOSS_TYPES = ("crossentropy", "ctc", "focal")


class CrossEntropyLoss(nn.Module):
    """Mean token cross-entropy over non-PAD positions."""

    def __init__(self, pad_idx: int = PAD_IDX, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigurationError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.pad_idx, self.label_smoothing = pad_idx, label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=self.pad_idx, label_smoothing=self.label_smoothing)


class CTCLoss(nn.Module):
    """CTC over the per-column outputs; mean over the batch of the per-sample loss / target length."""

    def __init__(self, blank_idx: int = BLANK_IDX, zero_infinity: bool = True):
        super().__init__()
        self.blank_idx = blank_idx
        self.ctc = nn.CTCLoss(blank=blank_idx, reduction="mean", zero_infinity=zero_infinity)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = logits.shape
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        lengths = target_lengths(targets)
        labels = targets[targets < 10]  # concatenated digits, row by row
        input_lengths = torch.full((batch,), steps, dtype=torch.long, device=logits.device)
        return self.ctc(log_probs, labels, input_lengths, lengths)


class FocalLoss(nn.Module):
    """Focal loss: down-weights easy tokens. ``alpha`` is one weight or one per class."""

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, pad_idx: int = PAD_IDX,
                 num_classes: int = VOCAB_SIZE):
        super().__init__()
        if gamma < 0:
            raise ConfigurationError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma, self.pad_idx = gamma, pad_idx
        if alpha is None:
            weights = None
        elif isinstance(alpha, (int, float)):
            weights = torch.full((num_classes,), float(alpha))
        else:
            weights = torch.tensor([float(a) for a in alpha])
            if weights.numel() != num_classes:
                raise ConfigurationError(f"focal alpha needs {num_classes} per-class weights, got {weights.numel()}")
        self.register_buffer("alpha", weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1, logits.shape[-1]).float()
        targets = targets.reshape(-1)
        keep = targets != self.pad_idx
        logits, targets = logits[keep], targets[keep]
        if targets.numel() == 0:
            return logits.sum() * 0.0
        log_pt = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        loss = -((1.0 - log_pt.exp()) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * self.alpha.to(loss.device)[targets]
        return loss.mean()


class OCRLoss(nn.Module):
    """One loss chosen by name (``crossentropy``, ``ctc``, ``focal``) behind one interface."""

    def __init__(self, loss_type: str = "crossentropy", label_smoothing: float = 0.0, focal_gamma: float = 2.0,
                 focal_alpha: float | Sequence[float] | None = None, pad_idx: int = PAD_IDX, blank_idx: int = BLANK_IDX):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ConfigurationError(f"unknown loss_type {loss_type!r} (choose one of {', '.join(LOSS_TYPES)})")
        self.loss_type = loss_type
        if loss_type == "crossentropy":
            self.loss: nn.Module = CrossEntropyLoss(pad_idx, label_smoothing)
        elif loss_type == "ctc":
            self.loss = CTCLoss(blank_idx)
        else:
            self.loss = FocalLoss(focal_gamma, focal_alpha, pad_idx)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets)
