"""Comparing two models' results on the same samples: the paired bootstrap interval of the CER difference.

Two results documents (``results/*.json``) are paired by sample (image and label); a sample that failed
(status ``error``) in either, or whose reference is empty, is left out, as it is of micro CER. The
statistic is the micro CER (total edits / total reference characters) of each model on a resample of
the paired samples, drawn with replacement from the per-sample figures, the same draw for both models;
the interval is the percentile interval of ``candidate - baseline`` over ``n_resamples`` draws from
``numpy.random.default_rng(seed)``. A negative difference means the candidate makes fewer errors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.metrics import score_pairs
from gemma_ocr.results import STATUS_ERROR, sample_status

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedSamples:
    """Per-sample edit counts of two models on the same references."""

    baseline_edits: list[int]
    candidate_edits: list[int]
    reference_chars: list[int]
    left_out: int = 0  # samples not in both documents, failed in either, or with an empty reference

    def __len__(self) -> int:
        return len(self.reference_chars)


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

    @property
    def relative_change(self) -> float | None:
        """``difference / baseline_cer`` (-0.3: 30% fewer errors), None when the baseline makes none."""
        return self.difference / self.baseline_cer if self.baseline_cer else None

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero."""
        return self.high < 0 or self.low > 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_change": self.relative_change, "excludes_zero": self.excludes_zero,
                "method": "paired bootstrap over samples, percentile interval of the micro CER difference"}

    def describe(self) -> str:
        """One line: the difference, its interval and how it was drawn."""
        rel = f" ({self.relative_change:+.0%})" if self.relative_change is not None else ""
        return (f"CER difference {self.difference:+.4f}{rel}, {self.confidence:.0%} interval "
                f"[{self.low:+.4f}, {self.high:+.4f}] (paired bootstrap over {self.samples} samples, "
                f"{self.n_resamples} resamples, seed {self.seed})")


def pair_samples(baseline: dict[str, Any], candidate: dict[str, Any], normalized: bool = False) -> PairedSamples:
    """Pair two results documents by (image_path, label) and count each model's edits per sample."""
    def usable(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(str(s.get("image_path")), s.get("label") or ""): s for s in doc.get("samples") or []
                if sample_status(s) != STATUS_ERROR}

    a, b = usable(baseline), usable(candidate)
    keys = [k for k in a if k in b and k[1]]
    total = max(len(baseline.get("samples") or []), len(candidate.get("samples") or []))
    labels = [k[1] for k in keys]
    score_a = score_pairs([a[k].get("prediction") or "" for k in keys], labels, normalize=normalized)
    score_b = score_pairs([b[k].get("prediction") or "" for k in keys], labels, normalize=normalized)
    kept = [i for i, s in enumerate(score_a) if s.reference_chars > 0]  # normalization can empty a reference
    return PairedSamples(baseline_edits=[score_a[i].edits for i in kept],
                         candidate_edits=[score_b[i].edits for i in kept],
                         reference_chars=[score_a[i].reference_chars for i in kept],
                         left_out=total - len(kept))


def bootstrap_cer_difference(pairs: PairedSamples, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                             confidence: float = DEFAULT_CONFIDENCE) -> CerDifference:
    """The paired bootstrap percentile interval of ``candidate CER - baseline CER`` (micro CER)."""
    import numpy as np

    if len(pairs) == 0:
        raise GemmaOcrError("no sample was scored for both models (same image and label, no failed request): "
                            "nothing to compare")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise GemmaOcrError(f"bootstrap: n_resamples must be >= 1 and confidence in (0, 1), "
                            f"got {n_resamples} and {confidence}")
    a = np.asarray(pairs.baseline_edits, dtype=np.float64)
    b = np.asarray(pairs.candidate_edits, dtype=np.float64)
    ref = np.asarray(pairs.reference_chars, dtype=np.float64)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // len(ref))  # bounded memory for large test sets
    for start in range(0, n_resamples, chunk):
        n = min(chunk, n_resamples - start)
        idx = rng.integers(0, len(ref), size=(n, len(ref)))
        total = ref[idx].sum(axis=1)
        diffs[start:start + n] = (b[idx].sum(axis=1) - a[idx].sum(axis=1)) / total
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    base_cer, cand_cer = a.sum() / ref.sum(), b.sum() / ref.sum()
    return CerDifference(baseline_cer=float(base_cer), candidate_cer=float(cand_cer),
                         difference=float(cand_cer - base_cer), low=float(low), high=float(high),
                         confidence=confidence, samples=len(ref), n_resamples=n_resamples, seed=seed,
                         left_out=pairs.left_out)


def compare_cer(baseline: dict[str, Any], candidate: dict[str, Any], normalized: bool = False,
                n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                confidence: float = DEFAULT_CONFIDENCE) -> CerDifference:
    """:func:`pair_samples` then :func:`bootstrap_cer_difference`: how much lower the candidate's CER is, and how sure."""
    return bootstrap_cer_difference(pair_samples(baseline, candidate, normalized), n_resamples, seed, confidence)
