"""Reproducible non_test/test splitting of a raw OCR dataset (seed 42, 1/6 non_test by default).

Records are split by image: all records of one image (:func:`gemma_ocr.data.records.image_key`) land on the same
side, so no image the model trained on is scored as a test image. Without repeated images the split is the
plain shuffle-and-cut of the seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gemma_ocr.data.records import OcrRecord, image_key
from gemma_ocr.errors import GemmaOcrError

T = TypeVar("T")

DEFAULT_SEED = 42
DEFAULT_NON_TEST_RATIO = 1 / 6


@dataclass(frozen=True)
class Split:
    non_test: list
    test: list


def record_group(item: object) -> Hashable | None:
    """What keeps items together in a split: a record's image (:func:`image_key`); None (alone) for any other item."""
    return image_key(item.image_path) if isinstance(item, OcrRecord) else None


def split_non_test(items: Sequence[T], non_test_ratio: float = DEFAULT_NON_TEST_RATIO, seed: int = DEFAULT_SEED,
                   group: Callable[[T], Hashable | None] = record_group) -> Split:
    """Shuffle the groups of ``items`` with ``random.Random(seed)`` and cut: the first ``round(n * ratio)`` of the
    ``n`` groups are non_test. ``group`` names each item's group (records: their image; None: a group of its own),
    so a group is never on both sides; with one item per group this is the plain shuffle of the items."""
    check_ratio(non_test_ratio)
    groups: dict[Hashable, list[T]] = {}
    for position, item in enumerate(items):
        key = group(item)
        groups.setdefault(("alone", position) if key is None else ("group", key), []).append(item)
    shuffled = list(groups.values())
    random.Random(seed).shuffle(shuffled)
    n_non_test = round(len(shuffled) * non_test_ratio)
    return Split(non_test=[item for g in shuffled[:n_non_test] for item in g],
                 test=[item for g in shuffled[n_non_test:] for item in g])


def ratio_problem(ratio: float) -> str:
    """Why ``ratio`` cannot be the non_test share ("" when it can): both parts need a share, 0 < ratio < 1."""
    return "" if 0.0 < ratio < 1.0 else f"must be between 0 and 1 (exclusive), got {ratio:g}"


def check_ratio(ratio: float) -> float:
    """``ratio``, or one line saying why it cannot be the non_test share."""
    problem = ratio_problem(ratio)
    if problem:
        raise GemmaOcrError(f"--non-test-ratio {problem}")
    return ratio


def parse_ratio(text: str) -> float:
    """``0.2``, ``1/6`` or ``1:5`` (non_test:test) as a number; a ValueError saying how to write it otherwise."""
    text = text.strip()
    try:
        if ":" in text:
            a, b = (float(x) for x in text.split(":"))
            return a / (a + b)
        if "/" in text:
            a, b = (float(x) for x in text.split("/"))
            return a / b
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"must be a fraction such as 0.2, 1/6 or 1:5 (non_test:test), got {text!r}") from None


def parse_split_spec(spec: str, n: int) -> slice:
    """Translate datasets-style split syntax (``train``, ``train[:90%]``, ``train[90%:]``, ``train[10:50]``) to a slice."""
    m = re.fullmatch(r"\s*(\w+)\s*(?:\[\s*([^:\]]*)\s*:\s*([^\]]*)\s*\])?\s*", spec)
    if not m:
        raise GemmaOcrError(f"split {spec!r}: write it as train, train[:90%] or train[90%:]")
    if m.group(1) != "train":
        raise GemmaOcrError(f"split {spec!r}: the data file is one split, named train; write train, train[:90%] or "
                            f"train[90%:] (another file: --input-data)")

    def bound(text: str, default: int) -> int:
        if not text:
            return default
        try:
            if text.endswith("%"):
                return int(round(n * float(text[:-1]) / 100.0))
            return int(text)
        except ValueError:
            raise GemmaOcrError(f"split {spec!r}: bound {text!r} is not a number or percentage") from None

    return slice(bound(m.group(2) or "", 0), bound(m.group(3) or "", n))
