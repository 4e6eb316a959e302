"""OCR metrics: normalization profiles, character units, character error rate (CER) and character F1.

Definitions (per sample, in the chosen character unit after the chosen normalization):

* CER = edit distance(prediction, reference) / len(reference). It can exceed 1 when the
  prediction is longer than the reference. An empty reference has no defined CER: such a
  sample scores 0.0 if the prediction is empty too and 1.0 otherwise, and is counted apart
  (``empty_references``); it never enters the micro or macro CER.
* F1 over the character multiset: tp = size of the multiset intersection, precision = tp /
  len(prediction), recall = tp / len(reference). Both empty: 1.0; exactly one empty: 0.0.

Character units (:data:`CHARACTER_UNITS`): ``codepoint`` counts Unicode code points (the seed's
definition, the default); ``grapheme`` counts extended grapheme clusters (Unicode UAX #29, the ``regex``
module's ``\\X``): what a reader sees as one character. "ខ្មេរ" read as "ខ្មែរ" is one wrong vowel: CER
0.20 by code point (1 of 5), 0.50 by grapheme cluster (1 of 2: ខ្មេ, រ).

Normalization profiles (:data:`NORMALIZATION_PROFILES`), each a fixed list of steps that
:func:`normalization_description` spells out (results files carry that line):

* ``raw``: the text as it is.
* ``seed``: whitespace, ASCII punctuation, CJK punctuation and zero-width characters (U+200B-U+200D,
  U+2060, U+FEFF) removed: the count_score.py normalization (zero-width characters are not white space
  to Python, yet U+200B is the usual Khmer word separator).
* ``nfc``: Unicode NFC (a decomposed "é" equals the composed one), then ``seed``.
* ``nfkc``: Unicode NFKC (full-width forms, ligatures, superscripts folded), then ``seed``.
* ``caseless``: Unicode NFKC and case folding (NFKC(casefold(NFKC(text)))), then ``seed``.

Overall figures:

* ``cer_micro`` = total edits / total reference characters (non-empty references). This is
  ``overall_cer`` in results files.
* ``cer_macro`` = mean of per-sample CER over non-empty references.
* ``f1_micro`` from summed tp / predicted / reference characters; ``overall_f1``.
* ``f1_macro`` = mean of per-sample F1 over all samples.

A figure is never computed from nothing: with no non-empty reference the CER figures are None (undefined,
not 0), with no sample at all the F1 figures too.

Edit distances come from rapidfuzz (MIT-licensed, C++), batched with ``cpdist``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import regex
from rapidfuzz.distance import Indel, Levenshtein
from rapidfuzz.process import cpdist

from gemma_ocr.errors import GemmaOcrError

CJK_PUNCTUATION = (
    "，。！？、；：「」『』（）《》〈〉【】〔〕［］｛｝“”‘’…—～·．・〜‧﹏﹑﹔﹕﹖﹗﹐﹒"
    "＂＇＃＄％＆＊＋－／＜＝＞＠＼＾＿｀｜"
)
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"  # zero width space, non-joiner, joiner; word joiner; BOM
_REMOVE = re.compile("[" + re.escape(string.punctuation + CJK_PUNCTUATION + ZERO_WIDTH) + r"]|\s", re.UNICODE)

_SEED_STEPS = "whitespace, ASCII and CJK punctuation and zero-width characters (U+200B-U+200D, U+2060, U+FEFF) removed"
#: profile -> exactly what it does to a text, in order
NORMALIZATION_PROFILES: dict[str, str] = {
    "raw": "none (the text as it is)",
    "seed": _SEED_STEPS,
    "nfc": "Unicode NFC, then " + _SEED_STEPS,
    "nfkc": "Unicode NFKC, then " + _SEED_STEPS,
    "caseless": "Unicode NFKC and case folding (NFKC(casefold(NFKC(text)))), then " + _SEED_STEPS,
}
DEFAULT_PROFILE = "seed"

CODE_POINT, GRAPHEME = "codepoint", "grapheme"
#: unit -> what one "character" is
CHARACTER_UNITS: dict[str, str] = {
    CODE_POINT: "Unicode code points",
    GRAPHEME: "extended grapheme clusters (Unicode UAX #29, the regex module's \\X)",
}
DEFAULT_UNIT = CODE_POINT
_GRAPHEME = regex.compile(r"\X")


def check_profile(profile: str) -> str:
    """``profile`` if it is a normalization profile, else one line naming the known ones."""
    if profile not in NORMALIZATION_PROFILES:
        raise GemmaOcrError(f"unknown normalization profile {profile!r}; use one of {', '.join(NORMALIZATION_PROFILES)}")
    return profile


def check_unit(unit: str) -> str:
    """``unit`` if it is a character unit, else one line naming the known ones."""
    if unit not in CHARACTER_UNITS:
        raise GemmaOcrError(f"unknown character unit {unit!r}; use one of {', '.join(CHARACTER_UNITS)}")
    return unit


def normalize_text(text: str | None, profile: str = DEFAULT_PROFILE) -> str:
    """``text`` after the normalization ``profile`` (see the module docstring); None is ""."""
    if not text:
        return ""
    check_profile(profile)
    if profile == "raw":
        return text
    if profile == "nfc":
        text = unicodedata.normalize("NFC", text)
    elif profile == "nfkc":
        text = unicodedata.normalize("NFKC", text)
    elif profile == "caseless":
        text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _REMOVE.sub("", text)


def normalization_description(profile: str = DEFAULT_PROFILE) -> str:
    """What :func:`normalize_text` does with ``profile``, in words (written into results files and reports)."""
    return NORMALIZATION_PROFILES[check_profile(profile)]


def graphemes(text: str) -> list[str]:
    """The extended grapheme clusters of ``text``, in order."""
    return _GRAPHEME.findall(text)


def split_units(text: str, unit: str = DEFAULT_UNIT) -> list[str]:
    """``text`` as its characters in ``unit``: code points, or grapheme clusters."""
    return list(text) if check_unit(unit) == CODE_POINT else graphemes(text)


def unit_length(text: str, unit: str = DEFAULT_UNIT) -> int:
    """How many characters ``text`` has in ``unit``."""
    return len(text) if check_unit(unit) == CODE_POINT else len(graphemes(text))


def as_units(texts: Sequence[str], unit: str = DEFAULT_UNIT) -> list[str]:
    """``texts`` with one string character per ``unit`` character: unchanged for code points; for graphemes
    each distinct cluster of the batch stands for one code of its own, so string edit distances count clusters."""
    if check_unit(unit) == CODE_POINT:
        return list(texts)
    codes: dict[str, str] = {}

    def code(cluster: str) -> str:
        if cluster not in codes:
            n = len(codes)
            codes[cluster] = chr(n if n < 0xD800 else n + 0x800)  # no lone surrogates
        return codes[cluster]

    return ["".join(map(code, graphemes(t))) for t in texts]


def edit_distance(a: str, b: str, unit: str = DEFAULT_UNIT) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1) in ``unit`` characters."""
    a, b = as_units([a, b], unit)
    return Levenshtein.distance(a, b)


def cer(prediction: str, reference: str, unit: str = DEFAULT_UNIT) -> float:
    """Character error rate of one sample (see module docstring for the empty-reference rule)."""
    if not reference:
        return 0.0 if not prediction else 1.0
    return edit_distance(prediction, reference, unit) / unit_length(reference, unit)


def _overlap(prediction: str, reference: str) -> int:
    return sum((Counter(prediction) & Counter(reference)).values())


def char_f1(prediction: str, reference: str, unit: str = DEFAULT_UNIT) -> float:
    """F1 of the character multisets of prediction and reference."""
    if not prediction and not reference:
        return 1.0
    if not prediction or not reference:
        return 0.0
    prediction, reference = as_units([prediction, reference], unit)
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
    """Corpus-level figures; ``overall_cer`` is micro CER, ``overall_f1`` is micro F1. None where nothing was
    measured: the CER figures without a non-empty reference, the F1 figures without a sample."""

    overall_cer: float | None
    overall_f1: float | None
    cer_micro: float | None
    cer_macro: float | None
    f1_micro: float | None
    f1_macro: float | None
    scored_samples: int
    empty_references: int
    empty_references_with_prediction: int
    total_edits: int
    total_reference_chars: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score_pairs(predictions: Sequence[str | None], references: Sequence[str | None], normalize: bool = False, *,
                profile: str = DEFAULT_PROFILE, unit: str = DEFAULT_UNIT) -> list[SampleScore]:
    """Per-sample scores for aligned lists, batched in rapidfuzz (C++, threads across cores).

    ``normalize`` applies the normalization ``profile`` to both sides first; lengths, edits and overlaps
    count ``unit`` characters (:data:`CHARACTER_UNITS`).

    The character overlap (multiset intersection) comes from the Indel distance of the sorted
    strings: for sorted sequences the longest common subsequence is the multiset intersection,
    so ``overlap = (len(p) + len(r) - indel(sorted(p), sorted(r))) / 2``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    check_unit(unit)
    if normalize:
        predictions = [normalize_text(p, profile) for p in predictions]
        references = [normalize_text(r, profile) for r in references]
    else:
        predictions = [p or "" for p in predictions]
        references = [r or "" for r in references]
    if not predictions:
        return []
    units = as_units([*predictions, *references], unit)  # one code table for both sides
    predictions, references = units[:len(predictions)], units[len(predictions):]
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
    """Combine per-sample scores into micro and macro figures (None where there is nothing to measure)."""
    non_empty = [s for s in scores if s.reference_chars > 0]
    total_edits = sum(s.edits for s in non_empty)
    total_ref = sum(s.reference_chars for s in non_empty)
    cer_micro = total_edits / total_ref if total_ref else None
    cer_macro = sum(s.cer for s in non_empty) / len(non_empty) if non_empty else None
    tp = sum(s.overlap for s in scores)
    n_pred = sum(s.prediction_chars for s in scores)
    n_ref = sum(s.reference_chars for s in scores)
    f1_micro: float | None
    if not scores:
        f1_micro = None
    elif n_pred == 0 and n_ref == 0:
        f1_micro = 1.0
    elif tp == 0:
        f1_micro = 0.0
    else:
        p, r = tp / n_pred, tp / n_ref
        f1_micro = 2 * p * r / (p + r)
    f1_macro = sum(s.f1 for s in scores) / len(scores) if scores else None
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
