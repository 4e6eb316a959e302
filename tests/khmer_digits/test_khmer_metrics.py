"""Metrics on hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import torch

from gemma_ocr.khmer_digits.metrics import (
    OCRMetrics, calculate_character_accuracy, calculate_edit_distance, calculate_sequence_accuracy, confusion_matrix,
    per_class_accuracy,
)
from gemma_ocr.khmer_digits.vocab import encode

PRED = ["០១២", "៣", "៥៥៥"]
TRUE = ["០១២", "៣៤", "៥៦"]


def test_hand_checked_figures():
    # matches 3 + 1 + 1 over max lengths 3 + 2 + 3
    assert math.isclose(calculate_character_accuracy(PRED, TRUE), 5 / 8)
    assert math.isclose(calculate_sequence_accuracy(PRED, TRUE), 1 / 3)
    # edit distances 0/3, 1/2, 2/3
    assert math.isclose(calculate_edit_distance(PRED, TRUE), (0 + 0.5 + 2 / 3) / 3)
    assert calculate_character_accuracy([""], [""]) == 1.0


def test_confusion_matrix_and_per_class():
    m = confusion_matrix(PRED, TRUE)
    assert m.shape == (10, 11)
    assert m[0, 0] == m[1, 1] == m[2, 2] == m[3, 3] == 1
    assert m[4, 10] == 1  # ៤ expected, nothing predicted there
    assert m[5, 5] == 1 and m[6, 5] == 1  # ៦ read as ៥
    acc = per_class_accuracy(m)
    assert acc["០"] == 1.0 and acc["៤"] == 0.0 and acc["៦"] == 0.0 and acc["៩"] is None


def test_ocr_metrics_accumulates_batches_and_accepts_tensors():
    whole = OCRMetrics()
    whole.update(PRED, TRUE)
    parts = OCRMetrics()
    parts.update(PRED[:1], TRUE[:1])
    parts.update(torch.tensor([encode(p) for p in PRED[1:]]), torch.tensor([encode(t) for t in TRUE[1:]]))
    a, b = whole.compute(), parts.compute()
    for key in ("char_accuracy", "seq_accuracy", "edit_distance", "num_sequences"):
        assert math.isclose(a[key], b[key]), key
    assert np.array_equal(whole.confusion_matrix(), parts.confusion_matrix())
    assert a["num_sequences"] == 3
    parts.reset()
    assert parts.compute()["num_sequences"] == 0
