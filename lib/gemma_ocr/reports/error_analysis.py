"""Error analysis of an evaluation: which characters the model misreads, on which samples, compared with what.

From a results file of ``evaluate.py`` (and optionally a baseline's, on the same data):

* **edits**: every step of each sample's Levenshtein alignment (rapidfuzz), counted as substitutions
  (reference character read as another), deletions (reference character missed) and insertions (extra
  predicted character). Over the non-empty references they add up to exactly the edits behind the micro
  CER, so ``edits / reference characters`` is the file's ``overall_cer`` (normalized text: its normalized one).
* **characters**: for each reference character, how often it was missed or misread.
* **CER by reference length**, **slices** (per script, line length and source: :mod:`gemma_ocr.scoring.slices`), and
  the **worst samples** with their image and the edits highlighted.
* **statuses** (truncated, repetition: :mod:`gemma_ocr.scoring.degenerate`) and **CER against confidence** (the
  least confident token's probability, where the server returned log-probabilities).
* **against a baseline**: the samples matched by image and label, how many got better or worse, the largest
  regressions.

:func:`gemma_ocr.reports.error_report.write_report` writes ``report.html`` (self-contained: plots and thumbnails embedded), ``summary.json``
and the plots as PNG files.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import Levenshtein

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import read_json
from gemma_ocr.scoring.answers import cut_at_max_tokens
from gemma_ocr.scoring.comparison import PairedSamples
from gemma_ocr.scoring.metrics import cer as sample_cer
from gemma_ocr.scoring.metrics import (DEFAULT_PROFILE, DEFAULT_UNIT, as_units, normalization_description, normalize_text,
                               split_units)
from gemma_ocr.scoring.results import STATUS_ERROR, STATUSES, check_results_document, clusters_of, sample_status
from gemma_ocr.scoring.slices import LENGTH_BUCKETS, sample_slices, slice_order

MISSING = "∅"  # the empty side of an insertion or a deletion, as shown
_SHOWN = {"": MISSING, " ": "␣", "\n": "⏎", "\t": "⇥"}


def shown_char(ch: str) -> str:
    """A character as a label: the empty side as ∅, whitespace by name (␣ ⏎ ⇥)."""
    return _SHOWN.get(ch, ch)


@dataclass
class SampleErrors:
    """One scored sample: its texts as compared, and its edits."""

    index: int
    image_path: str
    reference: str
    prediction: str
    edits: int
    substitutions: Counter = field(default_factory=Counter)  # (reference char, predicted char) -> count
    deletions: Counter = field(default_factory=Counter)  # reference char -> count
    insertions: Counter = field(default_factory=Counter)  # predicted char -> count
    label: str | None = None  # the reference as the data has it (before normalization); None: ``reference``
    source: str | None = None  # the page or document the data names for it
    unit: str = DEFAULT_UNIT  # what one character is (gemma_ocr.scoring.metrics.CHARACTER_UNITS)
    status: str = "ok"  # ok, empty, truncated or repetition (gemma_ocr.scoring.results)
    min_logprob: float | None = None  # the least confident token's log-probability, where the server gave them

    @property
    def length(self) -> int:
        """Reference characters, in :attr:`unit`."""
        return len(split_units(self.reference, self.unit))

    @property
    def cer(self) -> float:
        """The sample's CER (:func:`gemma_ocr.scoring.metrics.cer`, from the edits counted here)."""
        if not self.reference:
            return sample_cer(self.prediction, self.reference)  # the empty-reference rule
        return self.edits / self.length

    @property
    def key(self) -> tuple[str, str]:
        return (self.image_path, self.reference)


@dataclass
class ErrorAnalysis:
    """The errors of one results file."""

    model_name: str
    source: str
    text: str  # "raw" or a description of the normalization
    samples: list[SampleErrors]
    failed: list[dict[str, Any]]  # samples whose request failed (never scored)
    truncated: int | None = None  # answers cut at max_tokens (finish_reason "length"); None: not recorded
    unit: str = DEFAULT_UNIT  # what one character is: code points or grapheme clusters

    @property
    def scored(self) -> list[SampleErrors]:
        """Samples with a non-empty reference: those the CER counts."""
        return [s for s in self.samples if s.reference]

    @property
    def reference_chars(self) -> int:
        return sum(s.length for s in self.scored)

    @property
    def total_edits(self) -> int:
        return sum(s.edits for s in self.scored)

    @property
    def cer_micro(self) -> float | None:
        """Total edits / total reference characters; None when no scored sample has a reference character."""
        return self.total_edits / self.reference_chars if self.reference_chars else None

    def totals(self) -> dict[str, int]:
        subs, dels, ins = (sum(sum(getattr(s, k).values()) for s in self.scored)
                           for k in ("substitutions", "deletions", "insertions"))
        return {"substitutions": subs, "deletions": dels, "insertions": ins, "edits": self.total_edits,
                "reference_chars": self.reference_chars}

    def confusions(self, top: int | None = None) -> list[dict[str, Any]]:
        """The most frequent edits: ``{reference, prediction, kind, count}`` (an empty side is '')."""
        counts: Counter = Counter()
        for s in self.scored:
            counts.update({("substitution", r, p): n for (r, p), n in s.substitutions.items()})
            counts.update({("deletion", r, ""): n for r, n in s.deletions.items()})
            counts.update({("insertion", "", p): n for p, n in s.insertions.items()})
        return [{"reference": r, "prediction": p, "kind": kind, "count": n}
                for (kind, r, p), n in counts.most_common(top)]

    def characters(self, top: int | None = None) -> list[dict[str, Any]]:
        """Reference characters by how often they were missed or misread: ``{char, occurrences, errors, error_rate}``."""
        seen: Counter = Counter()
        wrong: Counter = Counter()
        for s in self.scored:
            seen.update(split_units(s.reference, s.unit))
            wrong.update(s.deletions)
            for (r, _), n in s.substitutions.items():
                wrong[r] += n
        rows = [{"char": c, "occurrences": seen[c], "errors": wrong[c], "error_rate": wrong[c] / seen[c]}
                for c in seen if wrong[c]]
        rows.sort(key=lambda row: (-row["errors"], -row["error_rate"], row["char"]))
        return rows[:top] if top is not None else rows

    def by_length(self) -> list[dict[str, Any]]:
        """Micro CER per bucket of reference length."""
        rows = []
        for lo, hi in LENGTH_BUCKETS:
            bucket = [s for s in self.scored if s.length >= lo and (hi is None or s.length <= hi)]
            chars = sum(s.length for s in bucket)
            rows.append({"length": f"{lo}-{hi}" if hi else f"{lo}+", "samples": len(bucket),
                         "cer_micro": sum(s.edits for s in bucket) / chars if chars else None})
        return rows

    def slices(self) -> dict[str, list[dict[str, Any]]]:
        """Micro CER per slice of each dimension (:mod:`gemma_ocr.scoring.slices`, by the label as the data has it):
        ``{dimension: [{slice, samples, cer_micro, edits, reference_chars}]}``; they add up to the totals."""
        return slice_table(self.samples, self.unit)

    def status_counts(self) -> dict[str, int]:
        """Samples by status, the failed requests included."""
        counts = Counter(s.status for s in self.samples)
        counts[STATUS_ERROR] = len(self.failed)
        return {status: counts.get(status, 0) for status in STATUSES}

    def confidence(self) -> list[tuple[float, float, str]]:
        """(least confident token's probability, CER, status) of each scored sample that has log-probabilities."""
        return [(math.exp(s.min_logprob), s.cer, s.status) for s in self.scored if s.min_logprob is not None]

    def worst(self, n: int) -> list[SampleErrors]:
        """The ``n`` samples with the highest CER (most edits first among equals)."""
        return sorted(self.samples, key=lambda s: (-s.cer, -s.edits, s.index))[:n]


def analyze_document(document: Any, source: str = "results file", normalized: bool = False,
                     profile: str = DEFAULT_PROFILE, unit: str = DEFAULT_UNIT) -> ErrorAnalysis:
    """Align every scored sample of a results document; ``normalized`` compares texts as the normalized CER does,
    ``unit`` counts code points or grapheme clusters (a Khmer vowel sign misread is then ខ្មែ → ខ្មេ)."""
    samples = check_results_document(document, source)["samples"]
    analysed, failed = [], []
    for position, s in enumerate(samples):
        if sample_status(s) == STATUS_ERROR:
            failed.append(s)
            continue
        reference, prediction = s.get("label") or "", s.get("prediction") or ""
        if normalized:
            reference, prediction = normalize_text(reference, profile), normalize_text(prediction, profile)
        sample = align(int(s.get("index", position)), str(s.get("image_path", "")), reference, prediction, unit)
        sample.label, sample.source = s.get("label") or "", s.get("source")
        sample.status = sample_status(s)
        lowest = s.get("min_logprob")
        if isinstance(lowest, (int, float)) and not isinstance(lowest, bool) and math.isfinite(lowest):
            sample.min_logprob = float(lowest)
        analysed.append(sample)
    text = f"normalized ({profile}): {normalization_description(profile)}" if normalized else "raw"
    answered = [s for s in samples if sample_status(s) != STATUS_ERROR]
    truncated = cut_at_max_tokens(answered)
    return ErrorAnalysis(str(document.get("model_name") or "model"), source, text, analysed, failed, truncated, unit)


def analyze_file(path: str | os.PathLike[str], normalized: bool = False, profile: str = DEFAULT_PROFILE,
                 unit: str = DEFAULT_UNIT) -> ErrorAnalysis:
    return analyze_document(read_json(path, "results file"), str(path), normalized, profile, unit)


def align(index: int, image_path: str, reference: str, prediction: str, unit: str = DEFAULT_UNIT) -> SampleErrors:
    """One sample's edits, from the Levenshtein alignment of reference to prediction in ``unit`` characters."""
    sample = SampleErrors(index, image_path, reference, prediction, 0, unit=unit)
    ref, pred = split_units(reference, unit), split_units(prediction, unit)
    for op in Levenshtein.editops(*as_units([reference, prediction], unit)):
        if op.tag == "replace":
            sample.substitutions[(ref[op.src_pos], pred[op.dest_pos])] += 1
        elif op.tag == "delete":
            sample.deletions[ref[op.src_pos]] += 1
        else:
            sample.insertions[pred[op.dest_pos]] += 1
        sample.edits += 1
    return sample


def slice_table(samples: list[SampleErrors], unit: str = DEFAULT_UNIT) -> dict[str, list[dict[str, Any]]]:
    """Micro CER of ``samples`` per slice of each dimension (membership by the label as the data has it)."""
    keys = sample_slices([{"label": s.reference if s.label is None else s.label, "image_path": s.image_path,
                           "source": s.source} for s in samples], unit)
    out: dict[str, list[dict[str, Any]]] = {}
    for dimension, names in keys.items():
        rows = []
        for name in slice_order(dimension, names):
            members = [s for s, k in zip(samples, names) if k == name]
            chars = sum(s.length for s in members)
            edits = sum(s.edits for s in members if s.reference)
            rows.append({"slice": name, "samples": len(members), "cer_micro": edits / chars if chars else None,
                         "edits": edits, "reference_chars": chars})
        out[dimension] = rows
    return out


# ------------------------------------------------------------------------------------------------ comparison

@dataclass
class Comparison:
    """Per-sample CER of a model against a baseline on the samples both scored."""

    baseline: ErrorAnalysis
    pairs: list[tuple[SampleErrors, SampleErrors]]  # (model, baseline)
    unmatched: int  # model samples the baseline did not score

    def counts(self) -> dict[str, int]:
        better = sum(1 for m, b in self.pairs if m.cer < b.cer)
        worse = sum(1 for m, b in self.pairs if m.cer > b.cer)
        return {"matched": len(self.pairs), "better": better, "worse": worse,
                "same": len(self.pairs) - better - worse, "unmatched": self.unmatched}

    def paired_samples(self) -> PairedSamples:
        """The matched samples with a non-empty reference as :mod:`gemma_ocr.scoring.comparison` tests them (edits per
        sample, sources as clusters where there are several, slices by the label as the data has it)."""
        kept = [(m, b) for m, b in self.pairs if m.reference]
        records = [{"label": m.reference if m.label is None else m.label, "image_path": m.image_path,
                    "source": m.source} for m, _ in kept]
        clusters, _ = clusters_of(records)
        return PairedSamples([b.edits for _, b in kept], [m.edits for m, _ in kept], [m.length for m, _ in kept],
                             len(self.pairs) - len(kept) + self.unmatched, clusters=clusters,
                             slices=sample_slices(records, self.baseline.unit))

    def regressions(self, n: int) -> list[tuple[SampleErrors, SampleErrors]]:
        """The ``n`` samples whose CER rose most over the baseline's."""
        worse = [(m, b) for m, b in self.pairs if m.cer > b.cer]
        return sorted(worse, key=lambda pair: (pair[1].cer - pair[0].cer, pair[0].index))[:n]


def compare(model: ErrorAnalysis, baseline: ErrorAnalysis) -> Comparison:
    """Match the two analyses' samples by image and reference text; fail when none match."""
    if model.unit != baseline.unit:
        raise GemmaOcrError(f"{baseline.source} is analysed by {baseline.unit}, {model.source} by {model.unit}: "
                            f"compare them in one character unit")
    by_key: dict[tuple[str, str], SampleErrors] = {}
    for s in baseline.samples:
        by_key.setdefault(s.key, s)
    pairs = [(s, by_key[s.key]) for s in model.samples if s.key in by_key]
    if model.samples and not pairs:
        raise GemmaOcrError(f"{baseline.source}: no sample matches {model.source} by image and label "
                            f"(compare results of the same data file)")
    return Comparison(baseline, pairs, len(model.samples) - len(pairs))
