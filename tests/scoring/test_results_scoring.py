"""Results documents: both character units, the normalization named, bootstrap intervals, slices that add up."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gemma_ocr.scoring.bootstrap import Bootstrap, micro_intervals, resampled_sums
from gemma_ocr.scoring.metrics import score_pairs
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.scoring.results import ScoringConfig, build_document, rescore_normalized


def _sample(i: int, label: str, prediction: str | None, status: str = "ok", **extra) -> dict:
    return {"index": i, "image_path": f"/data/{extra.pop('folder', 'a')}/{i}.png", "label": label,
            "prediction": prediction, "status": status, **extra}


def _fixed_samples(n: int = 60, seed: int = 3) -> list[dict]:
    """Lines with a known error pattern: every sample has the same length, a few are badly wrong."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "".join(rng.choice("abcdefgh") for _ in range(10))
        wrong = rng.choice([0, 0, 0, 1, 1, 2, 5])
        out.append(_sample(i, label, "x" * wrong + label[wrong:]))
    return out


# ------------------------------------------------------------------------------------ the bootstrap

def _plain_bootstrap(pairs: list[tuple[int, int]], n_resamples: int, seed: int,
                     clusters: list[str] | None = None) -> list[float]:
    """The textbook percentile bootstrap of sum(edits) / sum(chars), in plain Python (its own random numbers)."""
    rng = random.Random(seed)
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(clusters[i] if clusters else str(i), []).append(p)
    units = list(groups.values())
    values = []
    for _ in range(n_resamples):
        drawn = [p for _ in units for p in units[rng.randrange(len(units))]]
        values.append(sum(e for e, _ in drawn) / sum(c for _, c in drawn))
    values.sort()
    return [values[int(0.025 * n_resamples)], values[int(0.975 * n_resamples) - 1]]


def test_resampled_sums_are_sums_of_draws_with_replacement():
    columns = np.array([[1, 10], [2, 10], [0, 5], [7, 1]])
    sums = resampled_sums(columns, n_resamples=500, seed=1)
    assert sums.shape == (500, 2)
    # each resample holds 4 samples: the chars column is a sum of four of {10, 10, 5, 1}
    assert sums[:, 1].min() >= 4 and sums[:, 1].max() <= 40
    assert np.array_equal(sums, resampled_sums(columns, n_resamples=500, seed=1))  # the seed fixes the draws
    assert not np.array_equal(sums, resampled_sums(columns, n_resamples=500, seed=2))


def test_cer_interval_matches_a_plain_python_bootstrap_and_the_normal_approximation():
    samples = _fixed_samples(200)
    scores = score_pairs([s["prediction"] for s in samples], [s["label"] for s in samples])
    ours = micro_intervals({"raw": scores}, Bootstrap(20_000, seed=0))["raw"]["cer_micro_ci95"]
    plain = _plain_bootstrap([(s.edits, s.reference_chars) for s in scores], 20_000, seed=12345)
    width = plain[1] - plain[0]
    assert ours[0] == pytest.approx(plain[0], abs=0.06 * width) and ours[1] == pytest.approx(plain[1], abs=0.06 * width)
    # equal lengths: the micro CER is a mean of per-sample rates, so mean +- 1.96 standard errors is close too
    rates = np.array([s.cer for s in scores])
    se = rates.std(ddof=1) / math.sqrt(len(rates))
    assert ours[0] == pytest.approx(rates.mean() - 1.96 * se, abs=0.1 * width)
    assert ours[1] == pytest.approx(rates.mean() + 1.96 * se, abs=0.1 * width)


def test_a_cluster_bootstrap_draws_whole_sources_and_is_wider_when_pages_differ():
    samples = _fixed_samples(120)
    pages = [f"page{i // 10}" for i in range(120)]
    for i, s in enumerate(samples):  # one page in three is badly scanned: errors come by page
        if (i // 10) % 3 == 0:
            s["prediction"] = "zzzz" + s["label"][4:]
    scores = score_pairs([s["prediction"] for s in samples], [s["label"] for s in samples])
    pairs = [(s.edits, s.reference_chars) for s in scores]
    clustered = micro_intervals({"raw": scores}, Bootstrap(20_000), clusters=pages)["raw"]["cer_micro_ci95"]
    plain = _plain_bootstrap(pairs, 20_000, seed=99, clusters=pages)
    width = plain[1] - plain[0]
    assert clustered[0] == pytest.approx(plain[0], abs=0.06 * width)
    assert clustered[1] == pytest.approx(plain[1], abs=0.06 * width)
    per_sample = micro_intervals({"raw": scores}, Bootstrap(20_000))["raw"]["cer_micro_ci95"]
    assert clustered[1] - clustered[0] > 1.5 * (per_sample[1] - per_sample[0])


# ------------------------------------------------------------------------------------ the document

def test_every_results_file_states_unit_normalization_and_interval_method():
    doc = build_document(_fixed_samples(), "m", ScoringConfig(ci_resamples=2000, ci_seed=7))
    assert doc["character_unit"] == "codepoint" and doc["normalization_profile"] == "seed"
    assert "zero-width" in doc["normalization"]
    low, high = doc["overall_cer_ci95"]
    assert low < doc["overall_cer"] < high
    low, high = doc["overall_f1_ci95"]
    assert low < doc["overall_f1"] < high
    assert doc["normalized_overall_cer_ci95"] is not None
    method = doc["metrics"]["confidence_interval"]
    assert method == {"method": "percentile bootstrap over samples", "confidence": 0.95, "resamples": 2000, "seed": 7,
                      "clustered_by": None, "units": 60}
    again = build_document(_fixed_samples(), "m", ScoringConfig(ci_resamples=2000, ci_seed=7))
    assert again["overall_cer_ci95"] == doc["overall_cer_ci95"]  # stated seed, same interval
    # the seed's fields are all there, as they were
    for key in ("overall_cer", "overall_f1", "total_samples", "timestamp", "model_name", "samples"):
        assert key in doc
    assert {"image_path", "label", "prediction", "cer_score", "f1_score"} <= set(doc["samples"][0])


def test_both_units_side_by_side_and_the_headline_unit_is_a_setting():
    samples = [_sample(0, "ខ្មែរ", "ខ្មេរ"), _sample(1, "ក្រុម", "គ្រុម")]
    doc = build_document([dict(s) for s in samples], "m")
    by_unit = doc["metrics"]["by_unit"]
    assert by_unit["codepoint"]["raw"]["cer_micro"] == pytest.approx(2 / 10)
    assert by_unit["grapheme"]["raw"]["cer_micro"] == pytest.approx(2 / 4)
    assert doc["overall_cer"] == pytest.approx(0.2)
    graphemes = build_document([dict(s) for s in samples], "m", ScoringConfig(char_unit="grapheme"))
    assert graphemes["character_unit"] == "grapheme" and graphemes["overall_cer"] == pytest.approx(0.5)
    assert graphemes["samples"][0]["cer_score"] == pytest.approx(0.5)


def test_clustered_intervals_where_the_data_names_a_source():
    samples = _fixed_samples(40)
    for i, s in enumerate(samples):
        s["source"] = f"scan-{i % 4}"
    doc = build_document(samples, "m", ScoringConfig(ci_resamples=500))
    method = doc["metrics"]["confidence_interval"]
    assert method["clustered_by"] == "source" and method["units"] == 4
    assert method["method"] == "percentile bootstrap over clusters of samples by source"


def test_failed_samples_are_outside_the_intervals_and_intermediate_saves_have_none():
    samples = _fixed_samples(30) + [_sample(30, "abc", None, status="error", error="HTTP 500")]
    doc = build_document(samples, "m", ScoringConfig(ci_resamples=500))
    assert doc["metrics"]["confidence_interval"]["units"] == 30
    quick = build_document(_fixed_samples(30), "m", intervals=False)
    assert "overall_cer_ci95" not in quick and "confidence_interval" not in quick["metrics"]


def test_count_score_names_its_profile_and_interval(tmp_path):
    doc = build_document([_sample(0, "ខ្មែរ\u200bភាសា", "ខ្មែរភាសា"), _sample(1, "Ａb", "ab")], "m")
    seed = rescore_normalized(doc)
    assert seed["normalization_profile"] == "seed" and seed["overall_cer"] == pytest.approx(1 / 11)  # Ａ for a
    caseless = rescore_normalized(doc, scoring=ScoringConfig(normalization="caseless", ci_resamples=300))
    assert caseless["overall_cer"] == 0.0 and caseless["normalization"].startswith("Unicode NFKC and case folding")
    assert caseless["confidence_interval"]["resamples"] == 300 and caseless["overall_cer_ci95"] == [0.0, 0.0]


# ------------------------------------------------------------------------------------ slices

def test_slices_add_up_to_the_totals():
    rng = random.Random(5)
    texts = ["Invoice 42", "2026-05-16", "៦៩៧២៥១០", "ខ្មែរ", "發票號碼", "Привет", "", "!!", "a" * 60, "City market"]
    samples = []
    for i in range(80):
        label = rng.choice(texts)
        samples.append(_sample(i, label, label[:-1] + "x" if label and rng.random() < 0.5 else label,
                               folder=rng.choice(["scans/p1", "scans/p2", "phone"])))
    samples.append(_sample(80, "lost", None, status="error", error="timeout"))
    doc = build_document(samples, "m", ScoringConfig(ci_resamples=200))
    for text in ("raw", "normalized"):
        totals = doc["metrics"][text]
        for dimension in ("script", "length", "source"):
            slices = doc["metrics"]["slices"][text][dimension].values()
            assert sum(s["samples"] for s in slices) == totals["scored_samples"] == 80
            assert sum(s["total_edits"] for s in slices) == totals["total_edits"]
            assert sum(s["total_reference_chars"] for s in slices) == totals["total_reference_chars"]
            assert sum(s["empty_references"] for s in slices) == totals["empty_references"]
    raw = doc["metrics"]["slices"]["raw"]
    assert list(raw["script"]) == ["Latin", "digits", "CJK", "Khmer", "other"]  # every script, in reading order
    assert set(raw["source"]) == {"scans/p1", "scans/p2", "phone"}
    assert "51+" in raw["length"] and "0" in raw["length"]


@pytest.mark.parametrize("text, script", [
    ("Invoice 42", "Latin"), ("Total: 61504", "Latin"), ("2026-05-16", "digits"), ("$6350.91", "digits"),
    ("１２３", "digits"), ("៦៩៧២៥១០", "Khmer"), ("ខ្មែរ abc", "Khmer"), ("請給我 OCR 結果：6803", "CJK"),
    ("カタカナ", "CJK"), ("한국어", "CJK"), ("Привет", "other"), ("", "other"), ("?!", "other")])
def test_script_slices_follow_the_unicode_script_property(text, script):
    from gemma_ocr.scoring.slices import script_of

    assert script_of(text) == script


def test_source_slices_only_where_the_data_has_several():
    from gemma_ocr.scoring.slices import sample_slices

    one_folder = [_sample(i, "ab", "ab") for i in range(3)]
    assert "source" not in sample_slices(one_folder)
    named = [_sample(i, "ab", "ab", source=f"doc{i % 2}") for i in range(4)]
    assert sample_slices(named)["source"] == ["doc0", "doc1", "doc0", "doc1"]


def test_a_data_files_source_or_page_reaches_the_records_and_survives_a_rewrite(tmp_path):
    import json

    from gemma_ocr.data.records import load_records, write_records

    (tmp_path / "d.json").write_text(json.dumps([
        {"image_path": "a.png", "ocr_text": "x", "source": "invoice-7"},
        {"image_path": "b.png", "ocr_text": "y", "page": 3},
        {"image_path": "c.png", "ocr_text": "z"}]), encoding="utf-8")
    records = load_records(tmp_path / "d.json")
    assert [r.source for r in records] == ["invoice-7", "3", None]
    write_records(records, tmp_path / "again.json")
    assert [r.source for r in load_records(tmp_path / "again.json")] == ["invoice-7", "3", None]
    (tmp_path / "bad.json").write_text(json.dumps([{"image_path": "a.png", "ocr_text": "x", "source": [1]}]))
    from gemma_ocr.errors import GemmaOcrError

    with pytest.raises(GemmaOcrError, match="record 0 field 'source'"):
        load_records(tmp_path / "bad.json")


def test_rescoring_names_failures_refuses_answers_without_a_prediction_and_drops_stale_reasons():
    samples = [_sample(0, "abc", None, status="error", error="HTTP 500 from x"), _sample(1, "abcd", "abcd"),
               _sample(2, "ab", "", status="empty")]
    doc = build_document([dict(s) for s in samples], "m", intervals=False, complete=True)
    assert doc["failures"] == {"count": 1, "first": {"index": 0, "image_path": "/data/a/0.png", "error": "HTTP 500 from x"}}
    assert doc["complete"] is True and doc["overall_cer"] == pytest.approx(2 / 6)  # the two answers: 0 + 2 edits of 6
    doc["no_figures_reason"] = "stale"  # a field of an earlier state of the file: recomputed, not carried over
    out = rescore_normalized(doc)
    assert "no_figures_reason" not in out and out["failures"]["count"] == 1 and out["overall_cer"] == pytest.approx(2 / 6)
    doc["samples"][1].update(status="truncated", prediction=None)
    with pytest.raises(GemmaOcrError, match=r"^x.json: sample 1 has status 'truncated' but prediction null"):
        rescore_normalized(doc, source="x.json")
    doc["samples"][1].update(status="empty")  # nothing answered: the status says so, scored as ""
    assert rescore_normalized(doc)["normalized_metrics"]["scored_samples"] == 2
    failed_only = build_document([dict(samples[0])], "m", complete=True)
    assert failed_only["overall_cer"] is None and failed_only["overall_f1"] is None and failed_only["complete"] is False
    assert failed_only["no_figures_reason"].startswith("no CER: no sample was scored")
    assert failed_only["metrics"]["slices"]["raw"] == {"script": {}, "length": {}}
