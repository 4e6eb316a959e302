"""Tesseract and RapidOCR as evaluation and transcription backends, run for real on rendered lines."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.system_packages import missing_package

LINES = ["Invoice 2026-05-16", "Total: 61504", "Sample batch november", "Garden hotel 42"]
KHMER_LINES = ["០១២៣៤", "៥៦៧៨៩០"]


@functools.cache
def _tesseract_langs() -> frozenset[str]:
    if not shutil.which("tesseract"):
        return frozenset()
    out = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout
    return frozenset(l.strip() for l in out.splitlines()[1:] if l.strip())


TESSERACT_MISSING = (missing_package("tesseract-ocr", lambda: bool(shutil.which("tesseract")))
                     or missing_package("tesseract-ocr-eng", lambda: "eng" in _tesseract_langs()))
KHMER_DATA_MISSING = missing_package("tesseract-ocr-khm", lambda: "khm" in _tesseract_langs())
needs_tesseract = pytest.mark.skipif(bool(TESSERACT_MISSING), reason=TESSERACT_MISSING or "installed")
needs_khmer_data = pytest.mark.skipif(bool(KHMER_DATA_MISSING), reason=KHMER_DATA_MISSING or "installed")


def _rapidocr_missing() -> str:
    try:
        import rapidocr  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"RapidOCR is not installed ({e.name}): pip install -e '.[dev]' (or '.[engines]')"
    return ""


needs_rapidocr = pytest.mark.skipif(bool(_rapidocr_missing()), reason=_rapidocr_missing() or "installed")


def render(text: str, path: Path, khmer: bool = False, mode: str = "RGB") -> Path:
    """A text line as a scan would show it: dark text on a light background, the project's real fonts."""
    from PIL import Image, ImageDraw, ImageFont

    from gemma_ocr.data.fonts import khmer_font, latin_font

    font = ImageFont.truetype(str(khmer_font() if khmer else latin_font()), 36)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 40, bottom - top + 30), "white")
    ImageDraw.Draw(image).text((20 - left, 15 - top), text, font=font, fill=(20, 20, 20))
    image.convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def line_data(tmp_path_factory) -> Path:
    """An OCR data file of rendered Latin lines, one image missing and one not an image."""
    folder = tmp_path_factory.mktemp("engine_lines")
    records = [{"image_path": render(t, folder / f"line{i}.png").name, "ocr_text": t} for i, t in enumerate(LINES)]
    records.append({"image_path": render("Figure 7", folder / "grey16.png", mode="I;16").name, "ocr_text": "Figure 7"})
    (folder / "broken.png").write_text("not an image")
    records.insert(2, {"image_path": "broken.png", "ocr_text": "lost"})
    records.append({"image_path": "missing.png", "ocr_text": "gone"})
    (folder / "test.json").write_text(json.dumps(records), encoding="utf-8")
    return folder / "test.json"


def _read(engine, paths):
    return sorted(engine.read(list(enumerate(map(str, paths))), workers=2))


@needs_tesseract
def test_tesseract_reads_rendered_lines_and_fails_only_the_bad_images(line_data):
    from gemma_ocr.evaluation.engines import TesseractEngine

    folder = line_data.parent
    paths = [folder / f"line{i}.png" for i in range(len(LINES))] + [folder / "broken.png", folder / "grey16.png"]
    readings = _read(TesseractEngine("eng", psm=7), paths)
    assert [text for _, text, _, _ in readings[:len(LINES)]] == LINES
    index, text, error, _ = readings[len(LINES)]
    assert text is None and "broken.png" in error  # its batch still read the rest
    assert readings[-1][1] == "Figure 7"  # a 16-bit greyscale scan, decoded by the project's rule


@needs_tesseract
@needs_khmer_data
def test_tesseract_reads_khmer_digits_with_the_khm_data(tmp_path):
    from gemma_ocr.evaluation.engines import TesseractEngine

    paths = [render(t, tmp_path / f"k{i}.png", khmer=True) for i, t in enumerate(KHMER_LINES)]
    readings = _read(TesseractEngine("khm", psm=7), paths)
    assert [text for _, text, _, _ in readings] == KHMER_LINES


@needs_rapidocr
def test_rapidocr_reads_rendered_lines_offline(line_data):
    from gemma_ocr.evaluation.engines import RapidOcrEngine

    folder = line_data.parent
    paths = [folder / f"line{i}.png" for i in range(len(LINES))] + [folder / "missing.png"]
    readings = _read(RapidOcrEngine("line"), paths)
    assert [text for _, text, _, _ in readings[:len(LINES)]] == LINES
    assert readings[-1][1] is None and "image not found" in readings[-1][2]


@needs_rapidocr
def test_rapidocr_page_mode_joins_rows_in_reading_order(tmp_path):
    from PIL import Image

    from gemma_ocr.evaluation.engines import RapidOcrEngine

    top, bottom = render("Invoice 2026", tmp_path / "a.png"), render("Total 61504", tmp_path / "b.png")
    a, b = Image.open(top), Image.open(bottom)
    page = Image.new("RGB", (max(a.width, b.width) + 80, a.height + b.height + 120), "white")
    page.paste(a, (40, 40))
    page.paste(b, (40, a.height + 80))
    page.save(tmp_path / "page.png")
    ((_, text, error, _),) = _read(RapidOcrEngine("page"), [tmp_path / "page.png"])
    assert error is None and text == "Invoice 2026\nTotal 61504"


@needs_tesseract
def test_evaluate_with_tesseract_writes_the_same_results_document_and_resumes(line_data, tmp_path):
    out = tmp_path / "tesseract.json"
    proc = run_cli("evaluate.py", "--backend", "tesseract", "--data-file", str(line_data), "--output-file", str(out),
                   "--top-k", "None", "--no-progress", "--ci-resamples", "2000", check=False)
    assert proc.returncode == 1, proc.stderr  # two images failed: exit code 1, as for a served model
    assert "model: tesseract-" in proc.stdout and "error 2" in proc.stdout
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["backend"] == "tesseract" and doc["engine"]["psm"] == 7 and doc["engine"]["lang"] == "eng"
    assert doc["model_name"].startswith("tesseract-") and doc["model_name"].endswith("eng psm7")
    ok = [s for s in doc["samples"] if s["status"] == "ok"]
    assert [s["prediction"] for s in ok] == [*LINES, "Figure 7"] and all(s["cer_score"] == 0.0 for s in ok)
    assert doc["overall_cer"] == 0.0 and doc["overall_cer_ci95"] == [0.0, 0.0]
    assert doc["metrics"]["confidence_interval"]["resamples"] == 2000
    errors = [s for s in doc["samples"] if s["status"] == "error"]
    assert {Path(s["image_path"]).name for s in errors} == {"broken.png", "missing.png"}
    assert all(s["cer_score"] is None for s in errors)

    again = run_cli("evaluate.py", "--backend", "tesseract", "--data-file", str(line_data), "--output-file", str(out),
                    "--top-k", "None", "--no-progress", check=False)
    assert "resumed 5" in again.stdout and "requested now 2" in again.stdout  # only the failed ones again
    other = run_cli("evaluate.py", "--backend", "tesseract", "--psm", "6", "--data-file", str(line_data),
                    "--output-file", str(out), "--top-k", "None", check=False)
    assert_one_line_error(other, str(out), "psm7", "psm6")


@needs_rapidocr
def test_transcribe_with_rapidocr_and_bad_engine_settings_are_one_line(line_data, tmp_path):
    out = tmp_path / "t.jsonl"
    proc = run_cli("transcribe.py", str(line_data.parent / "line0.png"), str(line_data.parent / "line1.png"),
                   "--backend", "rapidocr", "--output-file", str(out), "--no-progress")
    rows = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == LINES[:2] and {r["status"] for r in rows} == {"ok"}
    assert rows[0]["model"].startswith("rapidocr-") and "requested now 2" in proc.stdout
    bad = run_cli("evaluate.py", "--backend", "rapidocr", "--rapidocr-mode", "lines", check=False)
    assert_one_line_error(bad, "--rapidocr-mode", "line, page")


@needs_tesseract
def test_missing_tesseract_language_data_names_the_package(line_data, tmp_path):
    proc = run_cli("evaluate.py", "--backend", "tesseract", "--tesseract-lang", "eng+zzz", "--data-file", str(line_data),
                   "--output-file", str(tmp_path / "x.json"), check=False)
    assert_one_line_error(proc, "--tesseract-lang", "zzz", "apt-get install tesseract-ocr-zzz")
    assert not (tmp_path / "x.json").exists()


@needs_tesseract
def test_the_pipeline_puts_tesseract_beside_the_fine_tuned_model(line_data, tmp_path):
    """--compare-with tesseract: the engine reads the pipeline's test set, gets a row and a comparison line."""
    from gemma_ocr.data.records import load_records, write_records
    from gemma_ocr.pipeline.config import PipelineConfig
    from gemma_ocr.pipeline.stages import compare_with_engines, evaluate_engine
    from gemma_ocr.pipeline.state import StageRecord
    from gemma_ocr.pipeline.table import format_table
    from gemma_ocr.scoring.results import build_document

    cfg = PipelineConfig(root=tmp_path, compare_with=("tesseract",), eval_top_k=None, bootstrap_resamples=500)
    records = [r for r in load_records(line_data) if Path(r.image_path).name.startswith("line")]
    cfg.layout.test_json.parent.mkdir(parents=True)
    write_records(records, cfg.layout.test_json)
    cfg.results_dir.mkdir(parents=True)
    tesseract = evaluate_engine(cfg, StageRecord(cfg.state_file), "tesseract")
    assert tesseract["overall_cer"] == 0.0 and tesseract["total_samples"] == len(LINES)
    tuned = build_document([{"index": i, "image_path": r.image_path, "label": r.text, "prediction": r.text[:-1],
                             "status": "ok"} for i, r in enumerate(records)], "merged-gemma-ocr")
    comparisons = compare_with_engines(cfg, tuned, {"tesseract": tesseract})
    (candidate,) = comparisons["tesseract"].candidates
    assert candidate.overall.cer.difference > 0 and candidate.overall.worse == len(LINES)
    saved = json.loads((cfg.results_dir / "comparison_engines.json").read_text(encoding="utf-8"))
    assert saved["tesseract"]["baseline"]["model_name"] == tesseract["model_name"]
    table = format_table({"fine-tuned (merged-gemma-ocr)": tuned, tesseract["model_name"]: tesseract,
                          "engine_comparison": comparisons})
    assert any(line.startswith(tesseract["model_name"]) and "0.0000" in line for line in table.splitlines())
    assert f"Fine-tuned against {tesseract['model_name']}: CER 0.0000 -> " in table and "random sign flips" in table
    # rerun: the engine's results are kept while the test set is the same
    again = evaluate_engine(cfg, StageRecord(cfg.state_file), "tesseract")
    assert [s["prediction"] for s in again["samples"]] == [s["prediction"] for s in tesseract["samples"]]
