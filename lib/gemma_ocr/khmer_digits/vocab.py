"""The vocabulary: the ten Khmer digits and three special tokens (13 in all).

Index layout (the same for every model, so checkpoints and metrics agree):

* 0-9: ``០១២៣៤៥៦៧៨៩``
* 10: ``<EOS>`` ends a sequence (attention models)
* 11: ``<PAD>`` fills a target after EOS; ignored by losses and metrics
* 12: ``<BLANK>`` in CTC models; in attention models the same slot is ``<SOS>`` (reserved, never a target)

A target of ``max_sequence_length`` (default 9) holds up to 8 digits, then EOS, then PAD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from gemma_ocr.errors import DataLoaderError

DIGITS = "០១២៣៤៥៦៧៨៩"
EOS_IDX, PAD_IDX, BLANK_IDX = 10, 11, 12
SOS_IDX = BLANK_IDX
VOCAB_SIZE = 13
MAX_DIGITS = 8
MAX_SEQUENCE_LENGTH = MAX_DIGITS + 1
SPECIAL_TOKENS = {EOS_IDX: "<EOS>", PAD_IDX: "<PAD>", BLANK_IDX: "<BLANK>"}
CHAR_TO_IDX = {c: i for i, c in enumerate(DIGITS)}
IDX_TO_CHAR = {i: c for i, c in enumerate(DIGITS)}


def encode(text: str, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> list[int]:
    """Digits, then EOS, then PAD up to ``max_sequence_length``."""
    if len(text) > max_sequence_length - 1:
        raise DataLoaderError(f"label {text!r} has {len(text)} digits; at most {max_sequence_length - 1} fit (raise max_sequence_length)")
    try:
        ids = [CHAR_TO_IDX[c] for c in text]
    except KeyError as e:
        raise DataLoaderError(f"label {text!r} holds {e.args[0]!r}, which is not a Khmer digit (allowed: {DIGITS})") from None
    return ids + [EOS_IDX] + [PAD_IDX] * (max_sequence_length - len(ids) - 1)


def decode(indices: Iterable[int]) -> str:
    """Digits up to the first EOS; PAD and SOS/BLANK are skipped."""
    out = []
    for i in indices:
        i = int(i)
        if i == EOS_IDX:
            break
        if i in IDX_TO_CHAR:
            out.append(IDX_TO_CHAR[i])
    return "".join(out)


def ctc_collapse(indices: Sequence[int], blank: int = BLANK_IDX) -> str:
    """CTC best-path rule: merge repeats, then drop blanks (and any special token)."""
    out, prev = [], None
    for i in indices:
        i = int(i)
        if i != prev and i in IDX_TO_CHAR:
            out.append(IDX_TO_CHAR[i])
        prev = i
    return "".join(out)


def greedy_decode(logits: torch.Tensor, ctc: bool) -> list[str]:
    """Strings from model outputs ``(batch, steps, vocab)``: CTC best path or argmax up to EOS."""
    best = logits.argmax(dim=-1).tolist()
    return [ctc_collapse(row) if ctc else decode(row) for row in best]


def target_lengths(targets: torch.Tensor) -> torch.Tensor:
    """Number of digit tokens in each padded target row."""
    return (targets < len(DIGITS)).sum(dim=1)
