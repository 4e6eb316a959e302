"""Losses on hand-made logits: PAD masking, label smoothing, CTC with repeats and blanks, focal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gemma_ocr.errors import ConfigurationError
from gemma_ocr.khmer_digits.losses import CrossEntropyLoss, CTCLoss, FocalLoss, OCRLoss
from gemma_ocr.khmer_digits.vocab import BLANK_IDX, EOS_IDX, PAD_IDX, ctc_collapse, greedy_decode

V = 13


def _target(digits: list[int], length: int = 9) -> torch.Tensor:
    row = digits + [EOS_IDX] + [PAD_IDX] * (length - len(digits) - 1)
    return torch.tensor([row])


def _peaked(path: list[int], high: float = 20.0) -> torch.Tensor:
    logits = torch.zeros(1, len(path), V)
    for t, k in enumerate(path):
        logits[0, t, k] = high
    return logits


def test_cross_entropy_ignores_pad_positions():
    target = _target([1, 2])
    logits = torch.randn(1, 9, V)
    loss = CrossEntropyLoss()(logits, target)
    changed = logits.clone()
    changed[0, 3:] = torch.randn(6, V) * 50  # PAD positions only
    assert torch.isclose(loss, CrossEntropyLoss()(changed, target))
    expected = F.cross_entropy(logits[0, :3], target[0, :3])
    assert torch.isclose(loss, expected)


def test_label_smoothing_known_values():
    target = _target([4])
    uniform = torch.zeros(1, 9, V)
    assert math.isclose(CrossEntropyLoss(label_smoothing=0.1)(uniform, target).item(), math.log(V), rel_tol=1e-6)
    perfect = _peaked([4, EOS_IDX] + [PAD_IDX] * 7, high=100.0)
    assert CrossEntropyLoss()(perfect, target).item() < 1e-6
    # with smoothing eps a perfect prediction still pays eps * (mean over classes of -log p)
    smoothed = CrossEntropyLoss(label_smoothing=0.1)(perfect, target).item()
    assert math.isclose(smoothed, 0.1 * 100.0 * (V - 1) / V, rel_tol=1e-4)
    with pytest.raises(ConfigurationError):
        CrossEntropyLoss(label_smoothing=1.5)


def test_ctc_repeats_need_a_blank():
    ctc = CTCLoss()
    b = BLANK_IDX
    with_blank = _peaked([b, 1, b, 1, b])  # best path reads "11"
    no_blank = _peaked([b, 1, 1, 1, b])  # best path reads "1"
    assert ctc_collapse([b, 1, b, 1, b]) == "១១" and ctc_collapse([b, 1, 1, 1, b]) == "១"
    assert ctc(with_blank, _target([1, 1])).item() < 1e-3
    assert ctc(no_blank, _target([1, 1])).item() > 5.0
    assert ctc(no_blank, _target([1])).item() < 1e-3
    assert ctc(with_blank, _target([1])).item() > 5.0
    assert greedy_decode(with_blank, ctc=True) == ["១១"]


def test_ctc_batch_of_different_lengths():
    b = BLANK_IDX
    logits = torch.cat([_peaked([3, b, 5, 7, b, b]), _peaked([b, 9, b, b, b, b])])
    targets = torch.cat([_target([3, 5, 7]), _target([9])])
    loss = CTCLoss()(logits, targets)
    assert loss.item() < 1e-3
    swapped = CTCLoss()(logits, targets.flip(0))
    assert swapped.item() > 5.0


def test_focal_reduces_to_cross_entropy_and_down_weights_easy_tokens():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 9, V), torch.cat([_target([1, 2, 3]), _target([4])])
    ce = CrossEntropyLoss()(logits, target)
    assert torch.isclose(FocalLoss(gamma=0.0)(logits, target), ce, atol=1e-6)
    assert FocalLoss(gamma=2.0)(logits, target) < ce
    assert torch.isclose(FocalLoss(gamma=0.0, alpha=0.25)(logits, target), 0.25 * ce, atol=1e-6)
    # a per-class alpha that zeroes every class but EOS keeps only the EOS terms
    alpha = [0.0] * V
    alpha[EOS_IDX] = 1.0
    only_eos = FocalLoss(gamma=0.0, alpha=alpha)(logits, target)
    keep = target != PAD_IDX
    per_token = F.cross_entropy(logits[keep], target[keep], reduction="none")
    assert torch.isclose(only_eos, (per_token * (target[keep] == EOS_IDX)).mean(), atol=1e-6)
    with pytest.raises(ConfigurationError):
        FocalLoss(alpha=[1.0, 2.0])


def test_ocr_loss_factory():
    assert isinstance(OCRLoss("crossentropy").loss, CrossEntropyLoss)
    assert isinstance(OCRLoss("ctc").loss, CTCLoss)
    assert isinstance(OCRLoss("focal", focal_gamma=1.0).loss, FocalLoss)
    with pytest.raises(ConfigurationError, match="unknown loss_type 'mse'"):
        OCRLoss("mse")
