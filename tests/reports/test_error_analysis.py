"""Error analysis of evaluation results: the edits add up to the file's CER, and the report shows them."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from tests.helpers.programs import assert_one_line_error, run_cli
from gemma_ocr.data.records import load_raw_records
from gemma_ocr.reports.error_analysis import align, analyze_document, compare
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json
from gemma_ocr.scoring.results import build_document


def _results(records, predictions, model: str, failed: frozenset[int] = frozenset()) -> dict:
    """A results document as evaluate.py writes it (the same scoring code)."""
    samples = []
    for i, (r, p) in enumerate(zip(records, predictions)):
        s = {"index": i, "image_path": r.image_path, "label": r.text, "prediction": p}
        if i in failed:
            s.update(prediction=None, status="error", error="HTTP 500 from http://127.0.0.1:1: boom")
        else:
            s["status"] = "ok" if p.strip() else "empty"
        samples.append(s)
    return build_document(samples, model)


def _misread(text: str, every: int) -> str:
    """Every ``every``-th character replaced, and an extra '#' at the end: a model with a known error pattern."""
    return "".join("~" if i % every == 0 else c for i, c in enumerate(text)) + "#"


@given(st.text(max_size=30), st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_alignment_counts_exactly_the_levenshtein_edits(reference, prediction):
    s = align(0, "x.png", reference, prediction)
    assert s.edits == Levenshtein.distance(reference, prediction)
    assert sum(s.substitutions.values()) + sum(s.deletions.values()) + sum(s.insertions.values()) == s.edits
    assert all(r != p for r, p in s.substitutions)  # a substitution changes the character


def test_known_errors_are_counted_by_kind():
    s = align(0, "x.png", "Invoice 42", "lnvoice 4")
    assert dict(s.substitutions) == {("I", "l"): 1} and dict(s.deletions) == {"2": 1} and not s.insertions
    s = align(0, "x.png", "៥៩", "៥៩៩")
    assert dict(s.insertions) == {"៩": 1} and s.edits == 1


def test_edits_add_up_to_the_results_files_cer(synthetic_raw):
    records = load_raw_records(synthetic_raw)
    predictions = [_misread(r.text, 4) for r in records]
    predictions[5] = ""  # the model answered nothing
    doc = _results(records, predictions, "ft", failed=frozenset({2}))
    analysis = analyze_document(doc)
    assert analysis.cer_micro == pytest.approx(doc["overall_cer"], abs=1e-12)
    assert len(analysis.failed) == 1 and len(analysis.samples) == len(records) - 1
    totals = analysis.totals()
    assert totals["insertions"] >= len(records) - 2  # the '#' at the end of each non-empty answer
    assert totals["deletions"] >= len(records[5].text)  # everything of the empty answer was missed
    top = analysis.confusions(1)[0]
    assert (top["kind"], top["prediction"]) in (("insertion", "#"), ("substitution", "~"))
    assert sum(row["samples"] for row in analysis.by_length()) == len(analysis.scored)

    normalized = analyze_document(doc, normalized=True)
    assert normalized.cer_micro == pytest.approx(doc["normalized_overall_cer"], abs=1e-12)


def test_characters_most_often_missed():
    doc = build_document([{"index": 0, "image_path": "a.png", "label": "0101", "prediction": "O1O1", "status": "ok"},
                          {"index": 1, "image_path": "b.png", "label": "00", "prediction": "00", "status": "ok"}], "m")
    rows = analyze_document(doc).characters()
    assert rows == [{"char": "0", "occurrences": 4, "errors": 2, "error_rate": 0.5}]


def test_comparison_with_a_baseline(synthetic_raw):
    records = load_raw_records(synthetic_raw)
    base = analyze_document(_results(records, [_misread(r.text, 2) for r in records], "base"))
    tuned_predictions = [r.text for r in records]
    tuned_predictions[0] = "completely wrong and longer than the line"
    tuned = analyze_document(_results(records, tuned_predictions, "tuned"))
    comparison = compare(tuned, base)
    counts = comparison.counts()
    assert counts["matched"] == len(records) and counts["unmatched"] == 0
    assert counts["better"] == len(records) - 1 and counts["worse"] == 1
    (model, baseline), = comparison.regressions(5)
    assert model.index == 0 and model.cer > baseline.cer

    other = analyze_document(build_document([{"index": 0, "image_path": "zz.png", "label": "x", "prediction": "x",
                                              "status": "ok"}], "other"))
    with pytest.raises(GemmaOcrError, match="no sample matches"):
        compare(tuned, other)


def test_cli_writes_a_self_contained_report(tmp_path, synthetic_raw):
    records = load_raw_records(synthetic_raw)
    atomic_write_json(tmp_path / "base.json", _results(records, [_misread(r.text, 2) for r in records], "base"))
    tuned = [_misread(r.text, 6) for r in records]
    tuned_doc = _results(records, tuned, "tuned", failed=frozenset({1}))
    tuned_doc["samples"][3]["image_path"] = str(tmp_path / "moved-away.png")  # an image no longer there
    atomic_write_json(tmp_path / "tuned.json", tuned_doc)

    proc = run_cli("error_analysis.py", str(tmp_path / "tuned.json"), "--baseline", str(tmp_path / "base.json"),
                   "--output-dir", str(tmp_path / "report"), "--worst", "5")
    assert f"tuned: CER {tuned_doc['overall_cer']:.4f} (raw)" in proc.stdout
    assert "better" in proc.stdout and "report.html" in proc.stdout
    page = (tmp_path / "report/report.html").read_text(encoding="utf-8")
    plots = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert plots == ["cer_by_length.png", "cer_histogram.png", "cer_vs_baseline.png", "confusions.png"]
    embedded = re.findall(r'src="data:image/png;base64,', page)
    assert len(embedded) >= len(plots) + 4  # the plots and the worst samples' thumbnails travel in the page
    assert "The 5 worst samples" in page and "Failed requests (1" in page and "boom" in page
    assert 'class="bad"' in page and 'class="extra"' in page
    summary = json.loads((tmp_path / "report/summary.json").read_text(encoding="utf-8"))
    assert summary["failed_samples"] == 1 and summary["baseline"]["matched"] == len(records) - 2  # moved, failed
    assert summary["baseline"]["unmatched"] == 1
    assert summary["totals"]["edits"] == round(summary["cer_micro"] * summary["totals"]["reference_chars"])


def test_cli_bad_input_is_one_line(tmp_path):
    (tmp_path / "x.json").write_text('{"samples": [{"label": "a"}]}')
    proc = run_cli("error_analysis.py", str(tmp_path / "x.json"), "--output-dir", str(tmp_path / "r"), check=False)
    assert_one_line_error(proc, "x.json", "sample 0", "prediction")
    proc = run_cli("error_analysis.py", str(tmp_path / "missing.json"), check=False)
    assert_one_line_error(proc, "missing.json")


def test_plot_labels_draw_khmer_cjk_and_symbols_together(tmp_path):
    """A label mixing scripts and symbols gets a glyph for every character (matplotlib warns on a missing one)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gemma_ocr.data.fonts import cjk_font
    from gemma_ocr.reports.plotting import use_font_for

    labels = ["៥ → ∅", "∅ → e", "a → ␣"] + (["日 → 目"] if cjk_font() else [])
    fig, ax = plt.subplots()
    ax.barh(labels, range(1, len(labels) + 1))
    use_font_for("".join(labels), ax.get_yticklabels())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(tmp_path / "labels.png")
    plt.close(fig)
    assert not [str(w.message) for w in caught if "missing from font" in str(w.message)]


@given(st.text(max_size=20), st.text(max_size=20))
@settings(max_examples=100, deadline=None)
def test_sample_cer_is_the_metrics_cer(reference, prediction):
    from gemma_ocr.scoring.metrics import cer

    assert align(0, "x.png", reference, prediction).cer == cer(prediction, reference)


def test_blank_characters_are_shown_by_name():
    from gemma_ocr.reports.error_analysis import shown_char

    assert [shown_char(c) for c in ("", " ", "\n", "\t", "a")] == ["∅", "␣", "⏎", "⇥", "a"]
    analysis = analyze_document(build_document([{"index": 0, "image_path": "a.png", "label": "a b", "prediction": "ab",
                                                 "status": "ok"}], "m"))
    (confusion,) = analysis.confusions()
    assert (confusion["kind"], shown_char(confusion["reference"]), shown_char(confusion["prediction"])) == ("deletion", "␣", "∅")


def test_the_comparison_section_states_the_interval_and_the_test(tmp_path, synthetic_raw):
    from gemma_ocr.reports.error_report import write_report

    records = load_raw_records(synthetic_raw)
    base = analyze_document(_results(records, [_misread(r.text, 2) for r in records], "base"))
    tuned = analyze_document(_results(records, [r.text for r in records], "tuned"))
    report = write_report(tuned, tmp_path / "r", worst=3, comparison=compare(tuned, base))
    paired = report.summary_data["baseline"]["paired"]
    assert paired["cer"]["high"] < 0 and paired["test"]["p_value"] < 0.001 and paired["better"] == len(records)
    assert sum(r["cer"]["samples"] for r in paired["slices"]["script"].values()) == paired["cer"]["samples"]
    page = report.html.read_text(encoding="utf-8")
    assert "p (permutation)" in page and "the interval excludes 0" in page and "10000 resamples, seed 0" in page


def test_by_grapheme_a_misread_khmer_vowel_is_one_confusion_of_clusters():
    doc = build_document([{"index": 0, "image_path": "a.png", "label": "ខ្មែរ", "prediction": "ខ្មេរ", "status": "ok"},
                          {"index": 1, "image_path": "b.png", "label": "ក្រុម", "prediction": "គ្រុម", "status": "ok"}], "m")
    by_point = analyze_document(doc)
    assert by_point.cer_micro == pytest.approx(doc["overall_cer"]) == pytest.approx(0.2)
    assert {(c["reference"], c["prediction"]) for c in by_point.confusions()} == {("ែ", "េ"), ("ក", "គ")}
    by_cluster = analyze_document(doc, unit="grapheme")
    assert by_cluster.cer_micro == pytest.approx(doc["metrics"]["by_unit"]["grapheme"]["raw"]["cer_micro"]) == 0.5
    assert {(c["reference"], c["prediction"]) for c in by_cluster.confusions()} == {("ខ្មែ", "ខ្មេ"), ("ក្រុ", "គ្រុ")}
    assert by_cluster.characters()[0]["char"] in ("ខ្មែ", "ក្រុ")
    with pytest.raises(GemmaOcrError, match="one character unit"):
        compare(by_cluster, by_point)


@given(st.text(alphabet=st.sampled_from(list("ខ្មែរេកគុ a\u0301")), max_size=12),
       st.text(alphabet=st.sampled_from(list("ខ្មែរេកគុ a\u0301")), max_size=12))
@settings(max_examples=100, deadline=None)
def test_grapheme_alignment_counts_the_grapheme_cer(reference, prediction):
    from gemma_ocr.scoring.metrics import cer

    s = align(0, "x.png", reference, prediction, unit="grapheme")
    assert s.cer == pytest.approx(cer(prediction, reference, unit="grapheme"))
    assert sum(s.substitutions.values()) + sum(s.deletions.values()) + sum(s.insertions.values()) == s.edits


def test_cli_by_grapheme(tmp_path):
    doc = build_document([{"index": 0, "image_path": "a.png", "label": "ខ្មែរ", "prediction": "ខ្មេរ", "status": "ok"}], "m")
    atomic_write_json(tmp_path / "r.json", doc)
    proc = run_cli("error_analysis.py", str(tmp_path / "r.json"), "--char-unit", "grapheme", "--output-dir", str(tmp_path / "o"))
    assert "CER 0.5000" in proc.stdout and "ខ្មែ -> ខ្មេ" in proc.stdout
    page = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "extended grapheme clusters" in page and "1781 17D2 1798 17C2" in page  # the cluster's code points
