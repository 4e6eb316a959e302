"""Slices of a test set: the same figures per script, per line length and per source.

Each sample falls into exactly one slice of each dimension, decided by its reference text as it is in
the data (before normalization, so raw and normalized figures cover the same samples):

* ``script``: by the Unicode Script property of the reference's characters: ``Khmer``, ``CJK`` (Han,
  Hiragana, Katakana, Hangul, Bopomofo), ``Latin``, ``other`` (any other script); the script with the
  most characters wins (ties in that order). ``digits`` is a line whose only letters are digits of the
  Common script (0-9, full-width digits): dates, amounts, numbers. Khmer digits (០-៩) are Khmer by their
  script property. A line of punctuation only, or an empty one, is ``other``.
* ``length``: the reference length in the chosen character unit, in :data:`LENGTH_BUCKETS` (``0``: an
  empty reference, outside the CER but inside F1 and the sample counts).
* ``source``: the sample's ``source`` (a page or document the data file names), else the folder its image
  lies in; only when the data has two or more of them.

Slices of one dimension add up to the whole: their samples, edits and reference characters sum to the
totals.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import regex

from gemma_ocr.scoring.metrics import DEFAULT_UNIT, SampleScore, aggregate, unit_length

SCRIPTS = ("Latin", "digits", "CJK", "Khmer", "other")
LENGTH_BUCKETS = ((1, 5), (6, 10), (11, 20), (21, 50), (51, None))  # reference characters, inclusive
DIMENSIONS = ("script", "length", "source")
_PREFERENCE = ("Khmer", "CJK", "Latin", "other")  # who wins a tie
_CLASSES = (("Khmer", regex.compile(r"\p{Script=Khmer}")),
            ("CJK", regex.compile(r"[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}"
                                  r"\p{Script=Bopomofo}]")),
            ("Latin", regex.compile(r"\p{Script=Latin}")),
            ("digits", regex.compile(r"[\p{Script=Common}&&\p{Nd}]", flags=regex.V1)),
            (None, regex.compile(r"[\p{Script=Common}\p{Script=Inherited}\p{Script=Unknown}]")))  # not counted


@functools.lru_cache(maxsize=65536)
def _char_class(ch: str) -> str | None:
    for name, pattern in _CLASSES:
        if pattern.match(ch):
            return name
    return "other"


def script_of(text: str) -> str:
    """The script slice of one reference text (see the module docstring)."""
    counts: dict[str, int] = {}
    for ch in text:
        c = _char_class(ch)
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    letters = {k: v for k, v in counts.items() if k != "digits"}
    if not letters:
        return "digits" if counts else "other"
    return max(_PREFERENCE, key=lambda k: (letters.get(k, 0), -_PREFERENCE.index(k)))


def length_bucket(length: int) -> str:
    """The length slice of a reference of ``length`` characters."""
    if length == 0:
        return "0"
    for lo, hi in LENGTH_BUCKETS:
        if length >= lo and (hi is None or length <= hi):
            return f"{lo}-{hi}" if hi else f"{lo}+"
    raise ValueError(length)


def length_order() -> list[str]:
    """The length slices in order."""
    return ["0", *(f"{lo}-{hi}" if hi else f"{lo}+" for lo, hi in LENGTH_BUCKETS)]


def sources(samples: Sequence[dict[str, Any]]) -> list[str] | None:
    """Each sample's source: its ``source`` field, else its image's folder (relative to the folders' common
    root); None when the samples come from fewer than two."""
    folders = [os.path.dirname(str(s.get("image_path") or "")) for s in samples]
    root = ""
    if folders and all(folders):
        try:
            root = os.path.commonpath(folders)
        except ValueError:  # mixed absolute and relative paths, or drives
            root = ""
    out = []
    for s, folder in zip(samples, folders):
        given = s.get("source")
        if given is not None and str(given) != "":
            out.append(str(given))
        else:
            out.append(os.path.relpath(folder, root) if root and folder else (folder or "."))
    return out if len(set(out)) >= 2 else None


def sample_slices(samples: Sequence[dict[str, Any]], unit: str = DEFAULT_UNIT) -> dict[str, list[str]]:
    """Per dimension, each sample's slice (by its ``label`` as it is); ``source`` only where there are several."""
    labels = [s.get("label") or "" for s in samples]
    out = {"script": [script_of(t) for t in labels], "length": [length_bucket(unit_length(t, unit)) for t in labels]}
    found = sources(samples)
    if found is not None:
        out["source"] = found
    return out


def slice_order(dimension: str, names: Sequence[str]) -> list[str]:
    """The slices of ``dimension`` that occur in ``names``, in reading order."""
    present = set(names)
    if dimension == "script":
        return [k for k in SCRIPTS if k in present]
    if dimension == "length":
        return [k for k in length_order() if k in present]
    return sorted(present)


def slice_figures(scores: Sequence[SampleScore], keys: dict[str, list[str]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per dimension and slice: ``samples``, micro/macro CER, micro F1, edits and reference characters."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dimension, names in keys.items():
        out[dimension] = {}
        for name in slice_order(dimension, names):
            overall = aggregate([s for s, k in zip(scores, names) if k == name])
            out[dimension][name] = {"samples": overall.scored_samples, "cer_micro": overall.cer_micro,
                                    "cer_macro": overall.cer_macro, "f1_micro": overall.f1_micro,
                                    "total_edits": overall.total_edits,
                                    "total_reference_chars": overall.total_reference_chars,
                                    "empty_references": overall.empty_references}
    return out
