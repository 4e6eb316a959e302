"""Comparing models' results on the same samples: paired bootstrap intervals, a paired significance test, slices.

Two results documents (``results/*.json``) are paired by sample (image and label); a sample that failed
(status ``error``) in either, or whose reference is empty, is left out, as it is of micro CER. Both are
scored again here with one normalization profile and one character unit (:mod:`gemma_ocr.scoring.metrics`), so the
figures are comparable whatever each file was written with.

* **Interval**: the micro CER (total edits / total reference characters) and micro F1 of each model on a
  resample of the paired samples, drawn with replacement, the same draw for both models
  (:func:`gemma_ocr.scoring.bootstrap.resampled_sums`, clustered by source where the data names one); the
  interval is the percentile interval of ``candidate - baseline`` over ``n_resamples`` draws from
  ``numpy.random.default_rng(seed)``. A negative CER difference means the candidate makes fewer errors.
* **Significance**: a paired permutation test: under "no difference", which model made which of a sample's
  two edit counts is a coin toss, so the sign of each sample's difference (each source's, when clustered)
  is flipped at random ``n_resamples`` times; the p-value is the share of flips whose total difference is
  at least as large as the one observed (two-sided, counting the observed one). The exact two-sided sign
  test on the samples that got better or worse is given beside it.
* **Wins, losses, ties**: samples whose CER went down, up, or stayed.

The same figures per slice (:mod:`gemma_ocr.scoring.slices`: script, line length, source). Each candidate is tested
against the baseline on its own; p-values are not corrected for testing several candidates or slices.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gemma_ocr.scoring.bootstrap import (DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, cluster_sums, percentile_interval,
                                 ratio, resampled_sums)
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT
from gemma_ocr.io import read_json
from gemma_ocr.scoring.metrics import (CHARACTER_UNITS, DEFAULT_PROFILE, DEFAULT_UNIT, check_profile, check_unit,
                                       normalization_description, score_pairs)
from gemma_ocr.scoring.results import (STATUS_ERROR, ProfileName, UnitName, check_results_document, check_unique_samples,
                               clusters_of, sample_status)
from gemma_ocr.scoring.slices import sample_slices, slice_order
from gemma_ocr.settings import FieldError

PERMUTATION_METHOD = "paired permutation test: random sign flips of the per-sample edit differences (two-sided)"
SIGN_TEST_METHOD = "exact two-sided sign test on the samples whose CER went down or up"
RELATIVE_CHANGE_FROM = 0.01  # the one-line description gives the relative change from a baseline CER of 1% up


@dataclass(frozen=True)
class PairedSamples:
    """Per-sample counts of two models on the same references (non-empty, scored by both)."""

    baseline_edits: list[int]
    candidate_edits: list[int]
    reference_chars: list[int]
    left_out: int = 0  # samples not in both documents, failed in either, or with an empty reference
    baseline_overlap: list[int] = field(default_factory=list)  # F1's matched characters
    candidate_overlap: list[int] = field(default_factory=list)
    baseline_predicted: list[int] = field(default_factory=list)  # F1's predicted characters
    candidate_predicted: list[int] = field(default_factory=list)
    clusters: list[Hashable | None] | None = None  # each sample's source, where the data names several
    slices: dict[str, list[str]] = field(default_factory=dict)  # dimension -> each sample's slice

    def __len__(self) -> int:
        return len(self.reference_chars)

    def subset(self, keep: Sequence[int]) -> PairedSamples:
        """The samples at the indices ``keep`` (a slice)."""
        def pick(values: list) -> list:
            return [values[i] for i in keep] if values else []

        return PairedSamples(pick(self.baseline_edits), pick(self.candidate_edits), pick(self.reference_chars), 0,
                             pick(self.baseline_overlap), pick(self.candidate_overlap), pick(self.baseline_predicted),
                             pick(self.candidate_predicted), pick(self.clusters) if self.clusters else None)


@dataclass(frozen=True)
class CerDifference:
    """Micro CER of both models, their difference (candidate - baseline) and its bootstrap interval."""

    baseline_cer: float
    candidate_cer: float
    difference: float
    low: float
    high: float
    confidence: float
    samples: int
    n_resamples: int
    seed: int
    left_out: int = 0
    clustered_by: str | None = None

    @property
    def relative_change(self) -> float | None:
        """``difference / baseline_cer`` (-0.3: 30% fewer errors), None when the baseline makes none."""
        return self.difference / self.baseline_cer if self.baseline_cer else None

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero."""
        return self.high < 0 or self.low > 0

    def to_dict(self) -> dict[str, Any]:
        unit = f"clusters of samples by {self.clustered_by}" if self.clustered_by else "samples"
        return {**asdict(self), "relative_change": self.relative_change, "excludes_zero": self.excludes_zero,
                "method": f"paired bootstrap over {unit}, percentile interval of the micro CER difference"}

    def describe(self) -> str:
        """One line: the difference, its interval and how it was drawn."""
        # against a baseline that makes almost no errors a relative change reads as "+4950%": the difference says it
        rel = f" ({self.relative_change:+.0%})" if self.baseline_cer >= RELATIVE_CHANGE_FROM else ""
        return (f"CER difference {self.difference:+.4f}{rel}, {self.confidence:.0%} interval "
                f"[{self.low:+.4f}, {self.high:+.4f}] (paired bootstrap over {self.samples} samples, "
                f"{self.n_resamples} resamples, seed {self.seed})")


@dataclass(frozen=True)
class F1Difference:
    """Micro F1 of both models, their difference (candidate - baseline) and its bootstrap interval."""

    baseline_f1: float
    candidate_f1: float
    difference: float
    low: float
    high: float


@dataclass(frozen=True)
class SignificanceTest:
    """The paired permutation test of the CER difference, and the sign test beside it."""

    p_value: float
    n_permutations: int
    seed: int
    sign_test_p: float
    method: str = PERMUTATION_METHOD
    sign_test_method: str = SIGN_TEST_METHOD

    def describe(self) -> str:
        """The permutation test's p-value in words (the smallest it can show is 1 / (permutations + 1))."""
        if self.p_value <= 1 / (self.n_permutations + 1) + 1e-12:
            return f"p <= {self.p_value:.2g} (none of {self.n_permutations} random sign flips reached the difference)"
        return f"p = {self.p_value:.4f} (paired permutation test, {self.n_permutations} random sign flips)"


@dataclass(frozen=True)
class PairedResult:
    """Everything about one candidate against the baseline on one set of paired samples."""

    cer: CerDifference
    f1: F1Difference | None
    test: SignificanceTest
    better: int
    worse: int
    same: int

    def to_dict(self) -> dict[str, Any]:
        return {"cer": self.cer.to_dict(), "f1": asdict(self.f1) if self.f1 else None, "test": asdict(self.test),
                "better": self.better, "worse": self.worse, "same": self.same}


def pair_samples(baseline: dict[str, Any], candidate: dict[str, Any], normalized: bool = False,
                 profile: str = DEFAULT_PROFILE, unit: str = DEFAULT_UNIT) -> PairedSamples:
    """Pair two results documents by (image_path, label) and count each model's edits per sample (after the
    normalization ``profile`` when ``normalized``, in ``unit`` characters). A document with an image in more
    than one sample is refused (:func:`check_unique_samples`)."""
    check_unique_samples(baseline, "the baseline")
    check_unique_samples(candidate, "the candidate")

    def usable(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(str(s.get("image_path")), s.get("label") or ""): s for s in doc.get("samples") or []
                if sample_status(s) != STATUS_ERROR}

    a, b = usable(baseline), usable(candidate)
    keys = [k for k in a if k in b and k[1]]
    total = max(len(baseline.get("samples") or []), len(candidate.get("samples") or []))
    labels = [k[1] for k in keys]
    score_a = score_pairs([a[k].get("prediction") or "" for k in keys], labels, normalize=normalized, profile=profile, unit=unit)
    score_b = score_pairs([b[k].get("prediction") or "" for k in keys], labels, normalize=normalized, profile=profile, unit=unit)
    kept = [i for i, s in enumerate(score_a) if s.reference_chars > 0]  # normalization can empty a reference
    samples = [a[keys[i]] for i in kept]
    clusters, _ = clusters_of(samples)
    return PairedSamples(baseline_edits=[score_a[i].edits for i in kept],
                         candidate_edits=[score_b[i].edits for i in kept],
                         reference_chars=[score_a[i].reference_chars for i in kept],
                         left_out=total - len(kept),
                         baseline_overlap=[score_a[i].overlap for i in kept],
                         candidate_overlap=[score_b[i].overlap for i in kept],
                         baseline_predicted=[score_a[i].prediction_chars for i in kept],
                         candidate_predicted=[score_b[i].prediction_chars for i in kept],
                         clusters=clusters, slices=sample_slices(samples, unit))


def _check(pairs: PairedSamples, n_resamples: int, confidence: float) -> None:
    if len(pairs) == 0:
        raise GemmaOcrError("no sample was scored for both models (same image and label, no failed request): "
                            "nothing to compare")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise GemmaOcrError(f"bootstrap: n_resamples must be >= 1 and confidence in (0, 1), "
                            f"got {n_resamples} and {confidence}")


def bootstrap_cer_difference(pairs: PairedSamples, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                             confidence: float = DEFAULT_CONFIDENCE) -> CerDifference:
    """The paired bootstrap percentile interval of ``candidate CER - baseline CER`` (micro CER)."""
    _check(pairs, n_resamples, confidence)
    a, b = np.asarray(pairs.baseline_edits, float), np.asarray(pairs.candidate_edits, float)
    ref = np.asarray(pairs.reference_chars, float)
    sums = resampled_sums(np.stack([a, b, ref], axis=1), n_resamples, seed, pairs.clusters)
    low, high = percentile_interval(ratio(sums[:, 1] - sums[:, 0], sums[:, 2]), confidence)
    base_cer, cand_cer = a.sum() / ref.sum(), b.sum() / ref.sum()
    return CerDifference(baseline_cer=float(base_cer), candidate_cer=float(cand_cer),
                         difference=float(cand_cer - base_cer), low=low, high=high,
                         confidence=confidence, samples=len(ref), n_resamples=n_resamples, seed=seed,
                         left_out=pairs.left_out, clustered_by="source" if pairs.clusters else None)


def bootstrap_f1_difference(pairs: PairedSamples, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                            confidence: float = DEFAULT_CONFIDENCE) -> F1Difference:
    """The paired bootstrap percentile interval of ``candidate F1 - baseline F1`` (micro F1, the same draws
    as :func:`bootstrap_cer_difference` with the same seed)."""
    _check(pairs, n_resamples, confidence)
    columns = np.array([pairs.baseline_overlap, pairs.baseline_predicted, pairs.candidate_overlap,
                        pairs.candidate_predicted, pairs.reference_chars], dtype=float).T
    totals = columns.sum(axis=0)
    sums = resampled_sums(columns, n_resamples, seed, pairs.clusters)

    def f1(tp: Any, predicted: Any, reference: Any) -> Any:
        return ratio(2 * np.asarray(tp, float), np.asarray(predicted, float) + np.asarray(reference, float))

    base, cand = float(f1(totals[0], totals[1], totals[4])), float(f1(totals[2], totals[3], totals[4]))
    low, high = percentile_interval(f1(sums[:, 2], sums[:, 3], sums[:, 4]) - f1(sums[:, 0], sums[:, 1], sums[:, 4]),
                                    confidence)
    return F1Difference(baseline_f1=base, candidate_f1=cand, difference=cand - base, low=low, high=high)


def sign_test(better: int, worse: int) -> float:
    """Exact two-sided sign test: the chance of a split at least this uneven among ``better + worse`` fair coin tosses."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def permutation_test(pairs: PairedSamples, n_permutations: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p-value of the paired permutation test of the CER difference (see the module docstring)."""
    d = np.asarray(pairs.candidate_edits, float) - np.asarray(pairs.baseline_edits, float)
    d = cluster_sums(d.reshape(-1, 1), pairs.clusters)[:, 0]  # the reference characters do not change with a flip
    observed = abs(d.sum())
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // len(d))
    for start in range(0, n_permutations, chunk):
        m = min(chunk, n_permutations - start)
        signs = rng.integers(0, 2, size=(m, len(d))) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed - 1e-9).sum())
    return (hits + 1) / (n_permutations + 1)


def paired_result(pairs: PairedSamples, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  confidence: float = DEFAULT_CONFIDENCE) -> PairedResult:
    """Interval of the CER and F1 differences, the significance tests, and the wins of ``pairs``."""
    cer = bootstrap_cer_difference(pairs, n_resamples, seed, confidence)
    f1 = bootstrap_f1_difference(pairs, n_resamples, seed, confidence) if pairs.baseline_overlap else None
    base = np.asarray(pairs.baseline_edits) / np.asarray(pairs.reference_chars)
    cand = np.asarray(pairs.candidate_edits) / np.asarray(pairs.reference_chars)
    better, worse = int((cand < base).sum()), int((cand > base).sum())
    test = SignificanceTest(p_value=permutation_test(pairs, n_resamples, seed), n_permutations=n_resamples, seed=seed,
                            sign_test_p=sign_test(better, worse))
    return PairedResult(cer, f1, test, better, worse, len(pairs) - better - worse)


def compare_cer(baseline: dict[str, Any], candidate: dict[str, Any], normalized: bool = False,
                n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                confidence: float = DEFAULT_CONFIDENCE) -> CerDifference:
    """:func:`pair_samples` then :func:`bootstrap_cer_difference`: how much lower the candidate's CER is, and how sure."""
    return bootstrap_cer_difference(pair_samples(baseline, candidate, normalized), n_resamples, seed, confidence)


# ------------------------------------------------------------------------------------------------ documents

@dataclass(frozen=True)
class Candidate:
    """One candidate against the baseline: overall and per slice."""

    model_name: str
    source: str
    overall: PairedResult
    slices: dict[str, dict[str, PairedResult]]
    left_out: int


@dataclass(frozen=True)
class ModelComparison:
    """A baseline and the candidates compared with it, and how."""

    baseline_name: str
    baseline_source: str
    candidates: list[Candidate]
    text: str  # "raw" or "normalized"
    normalization_profile: str
    character_unit: str
    n_resamples: int
    seed: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": {"model_name": self.baseline_name, "results_file": self.baseline_source},
            "text": self.text, "normalization_profile": self.normalization_profile,
            "normalization": normalization_description(self.normalization_profile) if self.text == "normalized" else "none",
            "character_unit": self.character_unit, "character_unit_description": CHARACTER_UNITS[self.character_unit],
            "interval": {"confidence": self.confidence, "resamples": self.n_resamples, "seed": self.seed},
            "significance": {"test": PERMUTATION_METHOD, "also": SIGN_TEST_METHOD,
                             "corrected_for_multiple_comparisons": False},
            "candidates": [{"model_name": c.model_name, "results_file": c.source, "left_out": c.left_out,
                            **c.overall.to_dict(),
                            "slices": {d: {k: r.to_dict() for k, r in rows.items()} for d, rows in c.slices.items()}}
                           for c in self.candidates],
        }


def _setting(docs: Sequence[tuple[str, dict[str, Any]]], key: str, default: str, given: str | None, flag: str) -> str:
    """The normalization profile or character unit every file was scored with (or ``given``); files that disagree
    and no ``given`` are refused in one line."""
    if given is not None:
        return given
    found = {source: str(doc.get(key) or default) for source, doc in docs}
    if len(set(found.values())) > 1:
        shown = ", ".join(f"{Path(s).name}: {v}" for s, v in found.items())
        raise GemmaOcrError(f"the results files were scored with different {key.replace('_', ' ')}s ({shown}); rescore "
                            f"them alike (python core/count_score.py ... {flag} X) or pass {flag} to compare under one")
    return next(iter(found.values()))


def _same_data(docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Refuse files scored on different data files, in one line."""
    first_source, first = docs[0]
    for source, doc in docs[1:]:
        a, b = first.get("data_file"), doc.get("data_file")
        if a and b and Path(a).resolve() != Path(b).resolve():
            raise GemmaOcrError(f"{source} is scored on {b}, {first_source} on {a}: compare results of the same data file")


def compare_documents(documents: Sequence[tuple[str, dict[str, Any]]], normalized: bool = False,
                      profile: str | None = None, unit: str | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE) -> ModelComparison:
    """Compare each of ``documents[1:]`` (``(source, results document)``) with ``documents[0]``, the baseline.

    Refused in one line: fewer than two, a file with an image in more than one sample, files of different data
    files, files scored with different
    normalization profiles or character units (unless ``profile``/``unit`` says which to use for all), and a
    candidate that shares no scored sample with the baseline.
    """
    if len(documents) < 2:
        raise GemmaOcrError("give at least two results files: the baseline first, then the models to compare with it")
    docs = [(source, check_results_document(doc, source)) for source, doc in documents]
    for source, doc in docs:
        check_unique_samples(doc, source)
    _same_data(docs)
    profile = check_profile(_setting(docs, "normalization_profile", DEFAULT_PROFILE, profile, "--normalization"))
    unit = check_unit(_setting(docs, "character_unit", DEFAULT_UNIT, unit, "--char-unit"))
    (base_source, base), candidates = docs[0], []
    for source, doc in docs[1:]:
        pairs = pair_samples(base, doc, normalized, profile, unit)
        if not len(pairs):
            raise GemmaOcrError(f"{source}: no sample matches {base_source} by image and label with both scored "
                                f"(compare results of the same data file)")
        slices = {}
        for dimension, names in pairs.slices.items():
            slices[dimension] = {name: paired_result(pairs.subset([i for i, k in enumerate(names) if k == name]),
                                                     n_resamples, seed, confidence)
                                 for name in slice_order(dimension, names)}
        candidates.append(Candidate(str(doc.get("model_name") or Path(source).stem), source,
                                    paired_result(pairs, n_resamples, seed, confidence), slices, pairs.left_out))
    return ModelComparison(str(base.get("model_name") or Path(base_source).stem), base_source, candidates,
                      "normalized" if normalized else "raw", profile, unit, n_resamples, seed, confidence)


# ------------------------------------------------------------------------------------------------ the command

@dataclass
class CompareConfig:
    """What compare_results.py compares and how. Fields are the flags."""

    results: Sequence[str] = field(default=(), metadata={
        "positional": True, "metavar": "RESULTS",
        "help": "results JSON files of evaluate.py on the same data: the baseline first, then the models to compare"})
    output: str = field(default=str(LAYOUT.comparison), metadata={"help": "where to write the comparison (JSON)"})
    normalized: bool = field(default=False, metadata={
        "help": "compare normalized text (the files' normalization profile, or --normalization)"})
    normalization: ProfileName | None = field(default=None, metadata={
        "help": "normalization profile for every file (raw, seed, nfc, nfkc, caseless; default: the one the files "
                "were scored with, which must agree)"})
    char_unit: UnitName | None = field(default=None, metadata={
        "help": "codepoint or grapheme (default: the files' character unit, which must agree)"})
    resamples: int = field(default=DEFAULT_RESAMPLES, metadata={
        "help": "bootstrap resamples and permutations of the test"})
    seed: int = field(default=DEFAULT_SEED, metadata={"help": "seed of the resampling and the permutations"})

    def validate(self) -> None:
        if len(self.results) < 2:
            raise FieldError("results", "needs two or more results files: the baseline first, then the models to "
                                        "compare with it")
        if isinstance(self.resamples, bool) or self.resamples < 1:
            raise FieldError("resamples", f"must be a whole number >= 1, got {self.resamples!r}")


def compare_files(cfg: CompareConfig) -> ModelComparison:
    """Read ``cfg.results`` and compare them (:func:`compare_documents`)."""
    cfg.validate()
    return compare_documents([(str(p), read_json(p, "results file")) for p in cfg.results], cfg.normalized,
                             cfg.normalization, cfg.char_unit, cfg.resamples, cfg.seed)
