"""The paired bootstrap interval of a CER difference, and the answer profile that flags degenerate models."""

from __future__ import annotations

import pytest

from gemma_ocr.scoring.answers import answer_profile, document_profile
from gemma_ocr.scoring.comparison import bootstrap_cer_difference, compare_cer, pair_samples
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.scoring.results import build_document


def doc(pairs, name="m", **extra_per_sample):
    samples = [{"image_path": f"{i}.png", "label": label, "prediction": pred, "status": status, **extra_per_sample}
               for i, (label, pred, status) in enumerate(pairs)]
    return build_document(samples, model_name=name)


LABELS = [f"{i:06d}" for i in range(40)]


def test_a_model_better_on_every_sample_has_an_interval_below_zero():
    base = doc([(l, l[:3], "ok") for l in LABELS])           # half of each line missing: CER 0.5
    tuned = doc([(l, l[:5], "ok") for l in LABELS])          # one character missing: CER 1/6
    diff = compare_cer(base, tuned, n_resamples=2000, seed=1)
    assert diff.baseline_cer == pytest.approx(0.5) and diff.candidate_cer == pytest.approx(1 / 6)
    assert diff.difference == pytest.approx(1 / 6 - 0.5) and diff.relative_change == pytest.approx(-2 / 3)
    assert diff.low == pytest.approx(diff.difference) == pytest.approx(diff.high)  # the same gain on every sample
    assert diff.excludes_zero and diff.samples == 40 and diff.left_out == 0
    assert "2000 resamples, seed 1" in diff.describe()


def test_the_relative_change_is_told_only_from_a_baseline_that_makes_errors():
    """Against an engine at CER 0.0014 a relative change reads as "+4950%": the line gives the difference alone."""
    near_perfect = doc([(l, l if i else l[:5], "ok") for i, l in enumerate(LABELS)])   # one edit in 240 characters
    worse = doc([(l, l[:5], "ok") for l in LABELS])
    line = compare_cer(near_perfect, worse, n_resamples=200, seed=0).describe()
    assert "%)" not in line and line.startswith("CER difference +0.16")
    worst = doc([(l, l[:3], "ok") for l in LABELS])                                   # CER 1/6 -> 0.5
    assert compare_cer(worse, worst, n_resamples=200, seed=0).describe().startswith("CER difference +0.3333 (+200%)")


def test_no_difference_on_average_gives_an_interval_around_zero():
    base = doc([(l, l if i % 2 else "", "ok") for i, l in enumerate(LABELS)])
    tuned = doc([(l, "" if i % 2 else l, "ok") for i, l in enumerate(LABELS)])
    diff = compare_cer(base, tuned, n_resamples=2000, seed=0)
    assert diff.difference == pytest.approx(0.0)
    assert diff.low < 0 < diff.high and not diff.excludes_zero


def test_the_interval_is_reproducible_by_seed_and_moves_with_it():
    base = doc([(l, l[: 2 + i % 4], "ok") for i, l in enumerate(LABELS)])
    tuned = doc([(l, l[: 3 + i % 3], "ok") for i, l in enumerate(LABELS)])
    a, b, c = (compare_cer(base, tuned, n_resamples=500, seed=s) for s in (7, 7, 8))
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)
    assert a.low <= a.difference <= a.high


def test_pairing_leaves_out_failed_missing_and_empty_reference_samples():
    base = doc([("123", "123", "ok"), ("456", None, "error"), ("789", "7", "ok"), ("", "x", "ok")])
    tuned = doc([("123", "12", "ok"), ("456", "456", "ok"), ("789", "789", "ok"), ("", "", "empty")])
    pairs = pair_samples(base, tuned)
    assert pairs.reference_chars == [3, 3] and pairs.baseline_edits == [0, 2] and pairs.candidate_edits == [1, 0]
    assert pairs.left_out == 2
    with pytest.raises(GemmaOcrError, match="no sample was scored for both models"):
        bootstrap_cer_difference(pair_samples(base, doc([("other", "x", "ok")])))


def test_a_constant_or_truncated_model_is_flagged():
    constant = answer_profile(["e"] * 30, LABELS[:30])
    assert constant.distinct == 1 and constant.flags == ["constant answer: 'e' for 30 of 30 samples"]
    varied = answer_profile(LABELS[:30], LABELS[:30], truncated=0)
    assert varied.flags == [] and varied.distinct == 30 and varied.truncated_share == 0.0
    # a label that is itself that common is no sign of a broken model
    assert answer_profile(["yes"] * 8 + ["no"] * 2, ["yes"] * 9 + ["no"]).flags == []
    cut = document_profile(doc([(l, l * 50, "ok") for l in LABELS], finish_reason="length"))
    assert cut.truncated_share == 1.0 and "40 of 40 answers cut at max_tokens" in cut.flags[0]
    assert document_profile(doc([(l, l, "ok") for l in LABELS])).truncated_share is None  # not recorded
