"""Comparing models: paired intervals and significance against plain implementations, slices, the command."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from tests.helpers.programs import assert_one_line_error, run_cli
from gemma_ocr.scoring.comparison import (PairedSamples, bootstrap_cer_difference, compare_cer, compare_documents, pair_samples,
                                  paired_result, permutation_test, sign_test)
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.scoring.results import ScoringConfig, build_document

LABELS = [f"line {i:04d} abc" for i in range(60)]


def doc(predictions, name="m", labels=LABELS, **fields) -> dict:
    samples = [{"index": i, "image_path": f"/data/{i}.png", "label": l, "prediction": p, "status": "ok"}
               for i, (l, p) in enumerate(zip(labels, predictions))]
    return {**build_document(samples, name, ScoringConfig(ci_resamples=200)), **fields}


def _damage(text: str, n: int) -> str:
    return "#" * n + text[n:]


# ------------------------------------------------------------------------------------ against plain implementations

def _plain_paired_bootstrap(a, b, ref, n_resamples, seed):
    rng = random.Random(seed)
    n, values = len(ref), []
    for _ in range(n_resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        values.append((sum(b[i] for i in idx) - sum(a[i] for i in idx)) / sum(ref[i] for i in idx))
    values.sort()
    return values[int(0.025 * n_resamples)], values[int(0.975 * n_resamples) - 1]


def _exact_permutation_p(a, b):
    """Every one of the 2^n sign patterns: the exact two-sided p-value of the paired permutation test."""
    d = [y - x for x, y in zip(a, b)]
    observed = abs(sum(d))
    hits = sum(abs(sum(s * v for s, v in zip(signs, d))) >= observed - 1e-9
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


def _pairs(a, b, ref) -> PairedSamples:
    return PairedSamples(list(a), list(b), list(ref))


def test_the_interval_of_the_difference_matches_a_plain_paired_bootstrap():
    rng = random.Random(11)
    ref = [rng.randint(5, 30) for _ in range(150)]
    a = [rng.randint(0, r // 2) for r in ref]
    b = [max(0, x + rng.choice([-2, -1, -1, 0, 0, 1])) for x in a]
    ours = bootstrap_cer_difference(_pairs(a, b, ref), n_resamples=20_000, seed=0)
    plain = _plain_paired_bootstrap(a, b, ref, 20_000, seed=5)
    width = plain[1] - plain[0]
    assert ours.low == pytest.approx(plain[0], abs=0.06 * width)
    assert ours.high == pytest.approx(plain[1], abs=0.06 * width)
    assert ours.difference == pytest.approx((sum(b) - sum(a)) / sum(ref))


@pytest.mark.parametrize("case", ["clearly better", "no difference", "mixed"])
def test_the_permutation_test_matches_exact_enumeration(case):
    ref = [10] * 12
    a = {"clearly better": [4] * 12, "no difference": [3, 1] * 6, "mixed": [5, 2, 4, 4, 1, 3, 6, 2, 3, 3, 5, 1]}[case]
    b = {"clearly better": [1] * 12, "no difference": [1, 3] * 6, "mixed": [3, 2, 4, 1, 1, 4, 2, 2, 3, 1, 6, 0]}[case]
    exact = _exact_permutation_p(a, b)
    p = permutation_test(_pairs(a, b, ref), n_permutations=40_000, seed=3)
    assert p == pytest.approx(exact, abs=0.01 + 0.05 * exact)
    if case == "clearly better":
        assert exact == pytest.approx(2 / 4096) and p < 0.001
    if case == "no difference":
        assert exact == 1.0 and p == 1.0


def test_the_sign_test_matches_scipys_binomial_test():
    from scipy.stats import binomtest

    for better, worse in [(0, 0), (3, 0), (10, 2), (7, 7), (40, 25), (1, 30)]:
        expected = binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
        assert sign_test(better, worse) == pytest.approx(expected)


def test_a_clear_gain_is_significant_and_noise_is_not():
    rng = random.Random(2)
    damage = [rng.randint(2, 5) for _ in LABELS]
    base = [_damage(l, n) for l, n in zip(LABELS, damage)]
    clearly = paired_result(pair_samples(doc(base), doc([_damage(l, rng.randint(0, 2)) for l in LABELS])), 5000, 0)
    assert clearly.cer.high < 0 and clearly.test.p_value < 0.001 and clearly.test.sign_test_p < 0.001
    assert clearly.f1.low > 0 and clearly.better > 40
    shuffled = rng.sample(damage, len(damage))  # the same errors on other lines, and one more
    shuffled[0] += 1
    noisy = paired_result(pair_samples(doc(base), doc([_damage(l, n) for l, n in zip(LABELS, shuffled)])), 5000, 0)
    assert noisy.cer.low < 0 < noisy.cer.high and noisy.test.p_value > 0.5 and noisy.test.sign_test_p > 0.05
    assert noisy.better + noisy.worse + noisy.same == len(LABELS)


def test_the_reader_api_keeps_its_meaning():
    base = doc([l[:6] for l in LABELS])
    tuned = doc([l[:12] for l in LABELS])
    diff = compare_cer(base, tuned, n_resamples=2000, seed=1)
    assert diff.low == pytest.approx(diff.difference) == pytest.approx(diff.high)  # the same gain on every sample
    assert diff.excludes_zero and diff.samples == 60 and "2000 resamples, seed 1" in diff.describe()


# ------------------------------------------------------------------------------------ documents and slices

def test_slices_of_a_comparison_add_up_and_sources_cluster_the_draws():
    labels = ["Invoice 42"] * 20 + ["ខ្មែរ ភាសា"] * 20 + ["2026-05-16"] * 20
    base = doc([_damage(l, 3) for l in labels], "base", labels)
    tuned = doc([_damage(l, 1) for l in labels], "tuned", labels)
    result = compare_documents([("base.json", base), ("tuned.json", tuned)], n_resamples=500)
    (cand,) = result.candidates
    for dimension, rows in cand.slices.items():
        assert sum(r.cer.samples for r in rows.values()) == cand.overall.cer.samples == 60, dimension
        assert sum(r.better for r in rows.values()) == cand.overall.better
    assert set(cand.slices["script"]) == {"Latin", "Khmer", "digits"}
    assert all(r.cer.high < 0 for r in cand.slices["script"].values())

    for i, s in enumerate(base["samples"]):
        s["source"] = f"page{i // 10}"
    clustered = compare_documents([("base.json", base), ("tuned.json", tuned)], n_resamples=500)
    assert clustered.candidates[0].overall.cer.clustered_by == "source"
    assert set(clustered.candidates[0].slices["source"]) == {f"page{i}" for i in range(6)}


def test_grapheme_unit_and_normalization_are_applied_to_both():
    labels = ["ខ្មែរ", "ក្រុម"] * 10
    base = doc(["ខ្មេរ", "គ្រុម"] * 10, "base", labels)
    tuned = doc(labels, "tuned", labels)
    by_code = compare_documents([("b", base), ("t", tuned)], n_resamples=200).candidates[0].overall.cer
    by_cluster = compare_documents([("b", base), ("t", tuned)], unit="grapheme", n_resamples=200).candidates[0].overall.cer
    assert by_code.baseline_cer == pytest.approx(0.2) and by_cluster.baseline_cer == pytest.approx(0.5)


def test_files_of_other_data_or_normalizations_are_refused():
    a, b = doc(LABELS, "a", data_file="data/a.json"), doc(LABELS, "b", data_file="data/b.json")
    with pytest.raises(GemmaOcrError, match="scored on data/b.json.*same data file"):
        compare_documents([("a.json", a), ("b.json", b)])
    b["data_file"] = "data/a.json"
    b["normalization_profile"] = "caseless"
    with pytest.raises(GemmaOcrError, match="different normalization profiles.*a.json: seed, b.json: caseless"):
        compare_documents([("a.json", a), ("b.json", b)])
    assert compare_documents([("a.json", a), ("b.json", b)], profile="seed", n_resamples=100).normalization_profile == "seed"
    other = doc(["x"] * 3, "c", labels=["zz", "yy", "xx"])
    with pytest.raises(GemmaOcrError, match="no sample matches"):
        compare_documents([("a.json", a), ("c.json", other)])


def test_the_command_prints_the_table_and_writes_json(tmp_path):
    rng = random.Random(4)
    paths = []
    for name, damage in (("base", (2, 5)), ("tuned", (0, 1)), ("other", (2, 5))):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc([_damage(l, rng.randint(*damage)) for l in LABELS], name)), encoding="utf-8")
        paths.append(str(path))
    out = tmp_path / "cmp.json"
    proc = run_cli("compare_results.py", *paths, "--output", str(out), "--resamples", "2000")
    assert "baseline: base" in proc.stdout and "per slice:" in proc.stdout and "p perm" in proc.stdout
    tuned_line = next(l for l in proc.stdout.splitlines() if l.startswith("tuned "))
    assert "0.0010" in tuned_line or "0.0005" in tuned_line  # (hits + 1) / 2001: no sign flip reached the gain
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert [c["model_name"] for c in saved["candidates"]] == ["tuned", "other"]
    assert saved["interval"] == {"confidence": 0.95, "resamples": 2000, "seed": 0}
    assert saved["significance"]["corrected_for_multiple_comparisons"] is False
    assert saved["candidates"][0]["test"]["p_value"] < 0.01 and saved["candidates"][1]["test"]["p_value"] > 0.01
    assert "script" in saved["candidates"][0]["slices"]

    proc = run_cli("compare_results.py", paths[0], check=False)
    assert_one_line_error(proc, "two or more results files")
    proc = run_cli("compare_results.py", paths[0], str(tmp_path / "missing.json"), check=False)
    assert_one_line_error(proc, "missing.json")


def test_permutations_flip_whole_sources_when_clustered():
    # every sample of a source got the same change; with 4 sources there are only 16 sign patterns
    pairs = PairedSamples([2] * 40, [1] * 40, [10] * 40, clusters=[f"s{i // 10}" for i in range(40)])
    p = permutation_test(pairs, n_permutations=20_000, seed=0)
    assert p == pytest.approx(2 / 16, abs=0.01)
    unclustered = permutation_test(PairedSamples([2] * 40, [1] * 40, [10] * 40), n_permutations=20_000, seed=0)
    assert unclustered < 0.001
    assert np.isclose(bootstrap_cer_difference(pairs, 500, 0).difference, -0.1)
