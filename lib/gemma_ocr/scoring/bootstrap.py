"""The bootstrap of the project's figures: resampled sums of per-sample counts, and percentile intervals.

Every figure with an interval here is a ratio of sums over samples (micro CER = total edits / total
reference characters; micro F1 = 2 x total overlap / (total predicted + total reference characters);
a CER difference = (edits of one model - edits of the other) / reference characters), so one resample
is one draw of sample indices with replacement, and every column of counts is summed over the same draw
(:func:`resampled_sums`). Where the data names a page or source for its samples, whole clusters are
drawn instead (a cluster bootstrap: lines of one page share its scan, font and layout, so they are not
independent evidence); a sample without one is a cluster of its own. The interval is the percentile
interval of the ``n_resamples`` values, drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemma_ocr.errors import GemmaOcrError

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
_CELLS_PER_CHUNK = 2_000_000  # indices drawn at a time: bounded memory for large test sets


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: resamples, seed, confidence level; :meth:`describe` states it in results files."""

    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    confidence: float = DEFAULT_CONFIDENCE

    def check(self) -> Bootstrap:
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) or self.n_resamples < 1:
            raise GemmaOcrError(f"bootstrap: the number of resamples must be a whole number >= 1, got {self.n_resamples!r}")
        if not 0.0 < self.confidence < 1.0:
            raise GemmaOcrError(f"bootstrap: the confidence level must lie in (0, 1), got {self.confidence!r}")
        return self

    def describe(self, units: int, clustered_by: str | None = None) -> dict[str, Any]:
        """The method as results files state it."""
        unit = f"clusters of samples by {clustered_by}" if clustered_by else "samples"
        return {"method": f"percentile bootstrap over {unit}", "confidence": self.confidence,
                "resamples": self.n_resamples, "seed": self.seed, "clustered_by": clustered_by, "units": units}


def cluster_sums(columns: np.ndarray, clusters: Sequence[Hashable | None] | None) -> np.ndarray:
    """``columns`` (samples x k) summed per cluster (a None label: a cluster of its own), in first-seen order."""
    if clusters is None:
        return columns
    index: dict[Hashable, int] = {}
    ids = np.array([index.setdefault(c if c is not None else ("sample", i), len(index)) for i, c in enumerate(clusters)])
    out = np.zeros((len(index), columns.shape[1]), dtype=np.float64)
    np.add.at(out, ids, columns)
    return out


def resampled_sums(columns: Sequence[Sequence[float]] | np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED, clusters: Sequence[Hashable | None] | None = None) -> np.ndarray:
    """Column sums (n_resamples x k) of ``columns`` (samples x k) over resamples drawn with replacement.

    With ``clusters`` (one label per sample), whole clusters are drawn: as many as there are clusters.
    """
    values = cluster_sums(np.asarray(columns, dtype=np.float64).reshape(len(columns), -1), clusters)
    n = len(values)
    if n == 0:
        raise GemmaOcrError("bootstrap: no samples to resample")
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, values.shape[1]))
    chunk = max(1, _CELLS_PER_CHUNK // n)
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        # how often each sample was drawn, per resample, then one matrix product: the sums of every column
        counts = np.bincount((idx + (np.arange(m) * n)[:, None]).ravel(), minlength=m * n).reshape(m, n)
        out[start:start + m] = counts @ values
    return out


def percentile_interval(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``values`` (NaN values, undefined resamples, left out)."""
    alpha = (1.0 - confidence) / 2
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` elementwise, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def micro_intervals(scores: dict[str, Sequence[Any]], boot: Bootstrap = Bootstrap(),
                    clusters: Sequence[Hashable | None] | None = None) -> dict[str, dict[str, list[float] | None]]:
    """95% intervals of the micro CER and micro F1 of each list of :class:`gemma_ocr.scoring.metrics.SampleScore` in
    ``scores`` (e.g. raw and normalized: the same samples, so the same draws serve every list).

    An empty reference adds to F1's sums only, as in :func:`gemma_ocr.scoring.metrics.aggregate`. None where there is
    nothing to resample.
    """
    n = {len(v) for v in scores.values()}
    if n != {next(iter(n))}:
        raise ValueError("micro_intervals: every list of scores covers the same samples")
    if not n or not next(iter(n)):
        return {k: {"cer_micro_ci95": None, "f1_micro_ci95": None} for k in scores}
    columns = np.array([[c for s in row for c in (s.edits if s.reference_chars else 0, s.reference_chars, s.overlap,
                                                  s.prediction_chars)] for row in zip(*scores.values())])
    sums = resampled_sums(columns, boot.n_resamples, boot.seed, clusters)
    out = {}
    for j, key in enumerate(scores):
        edits, ref, overlap, pred = sums[:, 4 * j:4 * j + 4].T
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(pred + ref > 0, 2 * overlap / np.where(pred + ref > 0, pred + ref, 1), 1.0)
        found = {"cer_micro_ci95": percentile_interval(ratio(edits, ref), boot.confidence),
                 "f1_micro_ci95": percentile_interval(f1, boot.confidence)}
        out[key] = {k: (None if np.isnan(v[0]) else [v[0], v[1]]) for k, v in found.items()}
    return out
