"""The data and scoring programs, run as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.programs import assert_one_line_error, run_cli
from gemma_ocr.scoring.results import build_document


def test_split_dataset_cli(tmp_path, synthetic_raw):
    out = tmp_path / "input"
    proc = run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(out))
    non_test, test = json.loads((out / "ocr_non_test.json").read_text()), json.loads((out / "ocr_test.json").read_text())
    assert len(non_test) == 7 and len(test) == 33  # round(40 / 6)
    assert set(non_test[0]) == {"image_path", "ocr_text"}
    assert "non_test:" in proc.stdout and "seed 42" in proc.stdout
    again = tmp_path / "again"
    run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(again))
    assert (again / "ocr_test.json").read_text() == (out / "ocr_test.json").read_text()
    run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(again), "--non-test-ratio", "1:1")
    assert len(json.loads((again / "ocr_test.json").read_text())) == 20
    assert "warning" not in proc.stdout
    few = tmp_path / "few.json"
    few.write_text(json.dumps(json.loads(synthetic_raw.read_text())[:2]))
    proc = run_cli("split_dataset.py", "--input", str(few), "--output-dir", str(tmp_path / "few"))
    assert "warning: non_test is empty: 2 records are too few" in proc.stdout


def test_split_dataset_bad_inputs(tmp_path):
    proc = run_cli("split_dataset.py", "--input", str(tmp_path / "none.json"), check=False)
    assert_one_line_error(proc, "not found", "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"img_path": "a.png"}]')
    proc = run_cli("split_dataset.py", "--input", str(bad), "--output-dir", str(tmp_path / "o"), check=False)
    assert_one_line_error(proc, "bad.json", "record 0", "ocr_results")
    assert not (tmp_path / "o").exists()  # nothing half-written
    proc = run_cli("split_dataset.py", "--input", str(bad), "--non-test-ratio", "7", check=False)
    assert_one_line_error(proc, "between 0 and 1")
    gone = tmp_path / "gone.json"
    gone.write_text('[{"img_path": "img/missing.png", "ocr_results": "x"}]')
    proc = run_cli("split_dataset.py", "--input", str(gone), "--check-images", "--output-dir", str(tmp_path / "o"), check=False)
    assert_one_line_error(proc, "gone.json", "record 0", "image not found", "missing.png")
    assert not (tmp_path / "o").exists()


def _results_file(tmp_path: Path) -> Path:
    samples = [
        {"image_path": "a.png", "label": "Hello, world!", "prediction": "hello world", "status": "ok"},
        {"image_path": "b.png", "label": "發票號碼：12", "prediction": "發票號碼 12", "status": "ok"},
        {"image_path": "c.png", "label": "abc", "prediction": "", "status": "empty"},
        {"image_path": "d.png", "label": "xyz", "prediction": "", "status": "error", "error": "timeout"},
    ]
    doc = build_document(samples, model_name="m")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


def test_count_score_round_trip(tmp_path):
    src = _results_file(tmp_path)
    out = tmp_path / "norm.json"
    proc = run_cli("count_score.py", "--input", str(src), "--output", str(out))
    doc, orig = json.loads(out.read_text()), json.loads(src.read_text())
    assert "CER micro" in proc.stdout and "CER macro" in proc.stdout
    assert "samples: 4 (scored 3, failed requests 1 not scored" in proc.stdout
    assert f"original: {orig['overall_cer']:.4f}" in proc.stdout
    a, b, c, d = doc["samples"]
    assert a["prediction"] == "hello world" and a["normalized_prediction"] == "helloworld"  # original kept
    assert a["normalized_label"] == "Helloworld" and a["cer_score"] == pytest.approx(0.1)
    assert a["original_cer_score"] == orig["samples"][0]["cer_score"] > a["cer_score"]
    assert b["cer_score"] == 0.0 and b["f1_score"] == 1.0
    assert c["cer_score"] == 1.0
    assert "normalized_label" not in d and d["cer_score"] is None  # failed requests are not scored
    # micro CER over scored samples: (1 + 0 + 3) edits / (10 + 6 + 3) chars
    assert doc["overall_cer"] == pytest.approx(4 / 19)
    assert doc["original_overall_cer"] == orig["overall_cer"]
    assert doc["total_samples"] == 4 and doc["normalized"] is True
    # idempotent: normalizing a normalized file changes no score
    out2 = tmp_path / "norm2.json"
    run_cli("count_score.py", "--input", str(out), "--output", str(out2))
    assert json.loads(out2.read_text())["overall_cer"] == pytest.approx(doc["overall_cer"])


def test_count_score_bad_input(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"samples": [{"label": "a"}]}')
    proc = run_cli("count_score.py", "--input", str(bad), "--output", str(tmp_path / "o.json"), check=False)
    assert_one_line_error(proc, "x.json", "sample 0", "prediction")
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("program", ["count_score.py", "error_analysis.py"])
@pytest.mark.parametrize("sample, fragment", [
    ({"label": "ab", "prediction": 5}, "sample 1 field 'prediction' is 5, not a string"),
    ({"label": ["ab"], "prediction": "a"}, "sample 1 field 'label' is ['ab'], not a string"),
    ({"label": "ab", "prediction": "a", "status": "fine"}, "sample 1 field 'status' is 'fine'"),
])
def test_a_results_file_with_a_malformed_field_is_one_line(program, sample, fragment, tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"samples": [{"label": "a", "prediction": "a"}, sample]}))
    args = ["--input", str(bad), "--output", str(tmp_path / "o.json")] if program == "count_score.py" else \
        [str(bad), "--output-dir", str(tmp_path / "report")]
    assert_one_line_error(run_cli(program, *args, check=False), "x.json", fragment)


def test_analyze_empty_predictions(tmp_path):
    src = _results_file(tmp_path)
    out = tmp_path / "empty.json"
    proc = run_cli("data_analysis/analyze_empty_predictions.py", "--input", str(src), "--output", str(out))
    assert "1 of 4 samples have an empty prediction" in proc.stdout
    assert [s["image_path"] for s in json.loads(out.read_text())["samples"]] == ["c.png"]


def test_train_test_data_writes_plots(tmp_path, synthetic_raw):
    inp = tmp_path / "input"
    run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(inp))
    out = tmp_path / "analysis"
    run_cli("data_analysis/train_test_data.py", "--train-file", str(inp / "ocr_non_test.json"),
            "--test-file", str(inp / "ocr_test.json"), "--output-dir", str(out))
    for name in ("label_lengths.png", "image_sizes.png", "char_frequency.png"):
        with Image.open(out / name) as im:
            assert im.width > 200
    stats = json.loads((out / "data_statistics.json").read_text())
    assert [s["samples"] for s in stats] == [7, 33]
    # a missing image is counted and named, not a crash
    records = json.loads((inp / "ocr_test.json").read_text())
    records[0]["image_path"] = "nowhere.png"
    (inp / "ocr_test.json").write_text(json.dumps(records))
    proc = run_cli("data_analysis/train_test_data.py", "--train-file", str(inp / "ocr_non_test.json"),
                   "--test-file", str(inp / "ocr_test.json"), "--output-dir", str(out))
    assert "warning: 1 test image(s) missing or unreadable" in proc.stdout and "nowhere.png" in proc.stdout


def test_make_synthetic_data_cli(tmp_path):
    run_cli("make_synthetic_data.py", "--output-dir", str(tmp_path), "--n-samples", "5", "--scripts", "khmer")
    data = json.loads((tmp_path / "ocr.json").read_text())
    assert len(data) == 5 and all(set(d["ocr_results"]) <= set("០១២៣៤៥៦៧៨៩") for d in data)
    assert (tmp_path / data[0]["img_path"]).is_file()

    # rendering again over its own output is fine; over imported data it needs --force
    run_cli("make_synthetic_data.py", "--output-dir", str(tmp_path), "--n-samples", "3", "--scripts", "khmer")
    assert len(json.loads((tmp_path / "ocr.json").read_text())) == 3
    (tmp_path / "ocr.json").write_text(json.dumps(data[:2]))  # as an import would leave it
    proc = run_cli("make_synthetic_data.py", "--output-dir", str(tmp_path), "--n-samples", "3", check=False)
    assert_one_line_error(proc, "ocr.json holds data this program did not write", "--force")
    assert len(json.loads((tmp_path / "ocr.json").read_text())) == 2
    run_cli("make_synthetic_data.py", "--output-dir", str(tmp_path), "--n-samples", "3", "--scripts", "khmer", "--force")
    assert len(json.loads((tmp_path / "ocr.json").read_text())) == 3
