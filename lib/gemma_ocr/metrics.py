"""OCR metrics: normalization, character error rate (CER) and character F1.

Definitions (per sample, on Unicode code points after optional normalization):

* CER = edit distance(prediction, reference) / len(reference). It can exceed 1 when the
  prediction is longer than the reference. An empty reference has no defined CER: such a
  sample scores 0.0 if the prediction is empty too and 1.0 otherwise, and is counted apart
  (``empty_references``); it never enters the micro or macro CER.
* F1 over the character multiset: tp = size of the multiset intersection, precision = tp /
  len(prediction), recall = tp / len(reference). Both empty: 1.0; exactly one empty: 0.0.

Overall figures:

* ``cer_micro`` = total edits / total reference characters (non-empty references). This is
  ``overall_cer`` in results files.
* ``cer_macro`` = mean of per-sample CER over non-empty references.
* ``f1_micro`` from summed tp / predicted / reference characters; ``overall_f1``.
* ``f1_macro`` = mean of per-sample F1 over all samples.

Edit distances come from rapidfuzz (MIT-licensed, C++), batched with ``cpdist``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rapidfuzz.distance import Levenshtein

CJK_PUNCTUATION = (
    "，。！？、；：「」『』（）《》〈〉【】〔〕［］｛｝“”‘’…—～·．・〜‧﹏﹑﹔﹕﹖﹗﹐﹒"
    "＂＇＃＄％＆＊＋－／＜＝＞＠＼＾＿｀｜"
)
_REMOVE = re.compile("[" + re.escape(string.punctuation + CJK_PUNCTUATION) + r"]|\s", re.UNICODE)


def normalize_text(text: str | None, nfkc: bool = False) -> str:
    """Remove whitespace, ASCII punctuation and CJK punctuation; with ``nfkc``, apply Unicode NFKC first."""
    if not text:
        return ""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    return _REMOVE.sub("", text)


def normalization_description(nfkc: bool = False) -> str:
    """What :func:`normalize_text` does, in words (written into results files and reports)."""
    return "whitespace, ASCII and CJK punctuation removed" + (", Unicode NFKC" if nfkc else "")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1) on code points."""
    return Levenshtein.distance(a, b)


def cer(prediction: str, reference: str) -> float:
    """Character error rate of one sample (see module docstring for the empty-reference rule)."""
    if not reference:
        return 0.0 if not prediction else 1.0
    return edit_distance(prediction, reference) / len(reference)


def _overlap(prediction: str, reference: str) -> int:
    return sum((Counter(prediction) & Counter(reference)).values())


def char_f1(prediction: str, reference: str) -> float:
    """F1 of the character multisets of prediction and reference."""
    if not prediction and not reference:
        return 1.0
    if not prediction or not reference:
        return 0.0
    tp = _overlap(prediction, reference)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(prediction), tp / len(reference)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class SampleScore:
    cer: float
    f1: float
    edits: int
    overlap: int
    prediction_chars: int
    reference_chars: int


@dataclass(frozen=True)
class OverallScore:
    """Corpus-level figures; ``overall_cer`` is micro CER, ``overall_f1`` is micro F1."""

    overall_cer: float
    overall_f1: float
    cer_micro: float
    cer_macro: float
    f1_micro: float
    f1_macro: float
    scored_samples: int
    empty_references: int
    empty_references_with_prediction: int
    total_edits: int
    total_reference_chars: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score_pairs(predictions: Sequence[str], references: Sequence[str], normalize: bool = False, nfkc: bool = False) -> list[SampleScore]:
    """Per-sample scores for aligned lists, batched in rapidfuzz (C++, threads across cores).

    The character overlap (multiset intersection) comes from the Indel distance of the sorted
    strings: for sorted sequences the longest common subsequence is the multiset intersection,
    so ``overlap = (len(p) + len(r) - indel(sorted(p), sorted(r))) / 2``.
    """
    from rapidfuzz.distance import Indel
    from rapidfuzz.process import cpdist

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if normalize:
        predictions = [normalize_text(p, nfkc) for p in predictions]
        references = [normalize_text(r, nfkc) for r in references]
    else:
        predictions = [p or "" for p in predictions]
        references = [r or "" for r in references]
    if not predictions:
        return []
    edits = cpdist(predictions, references, scorer=Levenshtein.distance, workers=-1).tolist()
    indel = cpdist(["".join(sorted(p)) for p in predictions], ["".join(sorted(r)) for r in references],
                   scorer=Indel.distance, workers=-1).tolist()
    scores = []
    for p, r, e, d in zip(predictions, references, edits, indel):
        lp, lr = len(p), len(r)
        tp = (lp + lr - d) // 2
        c = (e / lr) if lr else (0.0 if not lp else 1.0)
        f1 = 1.0 if not lp and not lr else (2 * tp / (lp + lr) if tp else 0.0)  # = 2PR/(P+R)
        scores.append(SampleScore(cer=c, f1=f1, edits=int(e), overlap=tp, prediction_chars=lp, reference_chars=lr))
    return scores


def aggregate(scores: Sequence[SampleScore]) -> OverallScore:
    """Combine per-sample scores into micro and macro figures."""
    non_empty = [s for s in scores if s.reference_chars > 0]
    total_edits = sum(s.edits for s in non_empty)
    total_ref = sum(s.reference_chars for s in non_empty)
    cer_micro = total_edits / total_ref if total_ref else 0.0
    cer_macro = sum(s.cer for s in non_empty) / len(non_empty) if non_empty else 0.0
    tp = sum(s.overlap for s in scores)
    n_pred = sum(s.prediction_chars for s in scores)
    n_ref = sum(s.reference_chars for s in scores)
    if n_pred == 0 and n_ref == 0:
        f1_micro = 1.0 if scores else 0.0
    elif tp == 0:
        f1_micro = 0.0
    else:
        p, r = tp / n_pred, tp / n_ref
        f1_micro = 2 * p * r / (p + r)
    f1_macro = sum(s.f1 for s in scores) / len(scores) if scores else 0.0
    empty = [s for s in scores if s.reference_chars == 0]
    return OverallScore(
        overall_cer=cer_micro,
        overall_f1=f1_micro,
        cer_micro=cer_micro,
        cer_macro=cer_macro,
        f1_micro=f1_micro,
        f1_macro=f1_macro,
        scored_samples=len(scores),
        empty_references=len(empty),
        empty_references_with_prediction=sum(1 for s in empty if s.prediction_chars > 0),
        total_edits=total_edits,
        total_reference_chars=total_ref,
    )
