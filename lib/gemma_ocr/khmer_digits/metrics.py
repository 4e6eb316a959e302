"""Accuracy metrics on decoded digit strings.

Definitions (``p`` prediction, ``t`` target; position ``i`` compares ``p[i]`` with ``t[i]``):

* character accuracy = sum of position-wise matches / sum of ``max(len(p), len(t))``: a missing or
  an extra character counts as an error, so accuracy 1.0 means every sequence is exact.
* sequence accuracy = exact matches / sequences.
* normalized edit distance = mean of ``Levenshtein(p, t) / max(len(p), len(t))`` (0 when both
  are empty), from rapidfuzz.
* confusion matrix: rows = target digit, columns = predicted digit at the same position, plus a
  last column for "no character predicted there".
* per-class accuracy = position-wise matches of a digit / its occurrences in the targets.

Inputs are strings or index tensors (decoded up to EOS, PAD skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rapidfuzz.distance import Levenshtein

from gemma_ocr.khmer_digits.vocab import CHAR_TO_IDX, DIGITS, decode

Texts = Sequence[str] | torch.Tensor


def _as_texts(x: Texts) -> list[str]:
    if isinstance(x, torch.Tensor):
        return [decode(row) for row in x.tolist()]
    return [s or "" for s in x]


def _matches(p: str, t: str) -> int:
    return sum(a == b for a, b in zip(p, t))


def calculate_character_accuracy(predictions: Texts, targets: Texts) -> float:
    preds, tgts = _as_texts(predictions), _as_texts(targets)
    total = sum(max(len(p), len(t)) for p, t in zip(preds, tgts))
    if total == 0:
        return 1.0
    return sum(_matches(p, t) for p, t in zip(preds, tgts)) / total


def calculate_sequence_accuracy(predictions: Texts, targets: Texts) -> float:
    preds, tgts = _as_texts(predictions), _as_texts(targets)
    if not tgts:
        return 0.0
    return sum(p == t for p, t in zip(preds, tgts)) / len(tgts)


def normalized_edit_distance(prediction: str, target: str) -> float:
    """Levenshtein distance / the longer length (0.0 for two empty strings)."""
    return Levenshtein.normalized_distance(prediction, target)


def calculate_edit_distance(predictions: Texts, targets: Texts) -> float:
    preds, tgts = _as_texts(predictions), _as_texts(targets)
    if not tgts:
        return 0.0
    return sum(normalized_edit_distance(p, t) for p, t in zip(preds, tgts)) / len(tgts)


def confusion_matrix(predictions: Texts, targets: Texts, characters: str = DIGITS) -> np.ndarray:
    """``(n, n + 1)`` counts: target character by predicted character at the same position; last column = none."""
    n = len(characters)
    index = CHAR_TO_IDX if characters == DIGITS else {c: i for i, c in enumerate(characters)}
    matrix = np.zeros((n, n + 1), dtype=np.int64)
    for p, t in zip(_as_texts(predictions), _as_texts(targets)):
        for i, tc in enumerate(t):
            if tc not in index:
                continue
            pc = p[i] if i < len(p) else None
            matrix[index[tc], index[pc] if pc in index else n] += 1
    return matrix


def per_class_accuracy(matrix: np.ndarray, characters: str = DIGITS) -> dict[str, float | None]:
    """Accuracy of each target character from a :func:`confusion_matrix` (None if it never occurs)."""
    out: dict[str, float | None] = {}
    for i, c in enumerate(characters):
        total = int(matrix[i].sum())
        out[c] = float(matrix[i, i] / total) if total else None
    return out


class OCRMetrics:
    """Accumulates predictions and targets over batches; :meth:`compute` gives the figures."""

    def __init__(self, idx_to_char: dict[int, str] | None = None):
        self.characters = "".join(idx_to_char[i] for i in sorted(idx_to_char) if i < len(DIGITS)) if idx_to_char else DIGITS
        self.reset()

    def reset(self) -> None:
        self.predictions: list[str] = []
        self.targets: list[str] = []
        self._matches = self._chars = self._exact = 0
        self._edit = 0.0
        self._matrix = np.zeros((len(self.characters), len(self.characters) + 1), dtype=np.int64)

    def update(self, predictions: Texts, targets: Texts) -> None:
        preds, tgts = _as_texts(predictions), _as_texts(targets)
        if len(preds) != len(tgts):
            raise ValueError(f"{len(preds)} predictions but {len(tgts)} targets")
        for p, t in zip(preds, tgts):
            self._matches += _matches(p, t)
            self._chars += max(len(p), len(t))
            self._exact += p == t
            self._edit += normalized_edit_distance(p, t)
        self._matrix += confusion_matrix(preds, tgts, self.characters)
        self.predictions.extend(preds)
        self.targets.extend(tgts)

    def compute(self) -> dict[str, Any]:
        n = len(self.targets)
        return {
            "char_accuracy": self._matches / self._chars if self._chars else (1.0 if n else 0.0),
            "seq_accuracy": self._exact / n if n else 0.0,
            "edit_distance": self._edit / n if n else 0.0,
            "num_sequences": n,
            "per_class_accuracy": per_class_accuracy(self._matrix, self.characters),
        }

    def confusion_matrix(self) -> np.ndarray:
        return self._matrix.copy()
