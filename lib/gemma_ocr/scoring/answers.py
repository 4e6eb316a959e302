"""How a model answers, beyond its CER: distinct answers, a constant answer, answers cut at max_tokens.

A model that answers every image the same way, or whose answers mostly run into ``max_tokens`` (it never
ends its turn), can still score a lower CER than another; such a model is flagged wherever results are
shown side by side (the pipeline's table, the error report).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gemma_ocr.scoring.degenerate import FINISH_LENGTH
from gemma_ocr.scoring.results import STATUS_ERROR, sample_status

CONSTANT_SHARE = 0.5  # one answer for at least half of the samples (when no label is that common) is flagged
TRUNCATED_SHARE = 0.5  # at least half of the answers cut at max_tokens is flagged
MIN_ANSWERS = 5  # fewer answers are too few to call a model constant


@dataclass(frozen=True)
class AnswerProfile:
    answers: int
    distinct: int
    most_common: str
    most_common_share: float
    empty_share: float
    truncated_share: float | None  # None: the results hold no finish_reason (written before it was recorded)
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_profile(predictions: Sequence[str], references: Sequence[str], truncated: int | None = None) -> AnswerProfile:
    """The profile of one model's scored answers; ``truncated``: how many of them were cut at max_tokens."""
    n = len(predictions)
    counts = Counter(predictions)
    top, top_n = counts.most_common(1)[0] if counts else ("", 0)
    share = top_n / n if n else 0.0
    label_share = Counter(references).most_common(1)[0][1] / len(references) if references else 0.0
    truncated_share = truncated / n if truncated is not None and n else None
    flags = []
    if n >= MIN_ANSWERS and share >= CONSTANT_SHARE and share > label_share:
        flags.append(f"constant answer: {top!r} for {top_n} of {n} samples")
    if truncated_share is not None and truncated_share >= TRUNCATED_SHARE:
        flags.append(f"{truncated} of {n} answers cut at max_tokens (the model does not end its turn)")
    return AnswerProfile(answers=n, distinct=len(counts), most_common=top, most_common_share=share,
                         empty_share=counts.get("", 0) / n if n else 0.0, truncated_share=truncated_share, flags=flags)


def cut_at_max_tokens(answered: Sequence[dict[str, Any]]) -> int | None:
    """How many of the answered samples were cut at max_tokens (``finish_reason`` length); None when the results
    hold no finish_reason (written before it was recorded)."""
    recorded = any("finish_reason" in s for s in answered)
    return sum(1 for s in answered if s.get("finish_reason") == FINISH_LENGTH) if recorded else None


def document_profile(document: dict[str, Any]) -> AnswerProfile:
    """:func:`answer_profile` of a results document's scored samples (failed requests left out)."""
    done = [s for s in document.get("samples") or [] if sample_status(s) != STATUS_ERROR]
    truncated = cut_at_max_tokens(done)
    return answer_profile([s.get("prediction") or "" for s in done], [s.get("label") or "" for s in done], truncated)
