"""transcribe.py: images without labels through the real embedded server; resume, failures, the import round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.eval_fixtures import ScriptedServer, eval_env

from gemma_ocr.data.importing import import_records
from gemma_ocr.data.records import load_records
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.evaluation.transcription import TranscribeConfig, collect_images, read_transcriptions, transcribe


def _cfg(url, inputs, out, **kw) -> TranscribeConfig:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("show_progress", False)
    return TranscribeConfig(urls=[url], inputs=[str(i) for i in inputs], output_file=out, **kw)


@pytest.fixture()
def scans(eval_data, tmp_path):
    """A folder of 5 unlabelled images (two in a sub-folder, one hidden) copied from the evaluation data."""
    records = load_records(eval_data)
    folder = tmp_path / "scans"
    (folder / "b").mkdir(parents=True)
    (folder / ".cache").mkdir()
    for i, rec in enumerate(records[:5]):
        shutil.copy(rec.image_path, folder / ("b" if i >= 3 else "") / f"p{i}.png")
    shutil.copy(records[5].image_path, folder / ".cache" / "hidden.png")
    return folder


def test_collect_images_folders_files_and_data_files(scans, eval_data, tmp_path):
    images = collect_images([scans, scans / "p1.png", eval_data])
    names = [str(Path(p).relative_to(scans)) for p in images[:5]]
    assert names == ["b/p3.png", "b/p4.png", "p0.png", "p1.png", "p2.png"]  # sorted, recursive, no hidden, no repeats
    assert images[5:] == [r.image_path for r in load_records(eval_data)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("x")
    for bad, fragment in ((tmp_path / "nowhere", "no such image"), (tmp_path / "empty", "no images"),
                          (tmp_path / "notes.md", "not an image or OCR data file")):
        with pytest.raises(GemmaOcrError, match=fragment):
            collect_images([bad])


def test_transcriptions_match_evaluation_and_resume(tiny_server, eval_data, tmp_path):
    url, name = tiny_server
    out = tmp_path / "out" / "t.jsonl"
    result = transcribe(_cfg(url, [eval_data], out, workers=3, save_interval=4))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    records = load_records(eval_data)
    assert len(rows) == len(records) == result.requested and result.resumed == 0
    assert all(r["model"] == name and r["status"] in ("ok", "empty", "truncated", "repetition")
               and not r["image_path"].startswith("/") for r in rows)
    assert [r["image_path"] for r in read_transcriptions(out)] == [r.image_path for r in records]

    # the same request as evaluation: the same answer per image
    doc = evaluate(EvalConfig(urls=[url], data_file=eval_data, output_file=tmp_path / "e.json", top_k=None,
                              max_tokens=12, show_progress=False)).document
    assert [r["text"] for r in rows] == [s["prediction"] for s in doc["samples"]]
    for key in ("status", "finish_reason"):
        assert [r[key] for r in rows] == [s[key] for s in doc["samples"]]
    for key in ("mean_logprob", "min_logprob"):  # batches of other sizes: the same within float rounding
        assert [r[key] for r in rows] == pytest.approx([s[key] for s in doc["samples"]], abs=1e-4)

    # a rerun requests nothing; --no-resume requests everything again
    again = transcribe(_cfg(url, [eval_data], out))
    assert again.requested == 0 and again.resumed == len(records) and again.rows == result.rows
    assert transcribe(_cfg(url, [eval_data], out, resume=False)).requested == len(records)


def test_failed_images_are_recorded_retried_and_kept_out_of_imports(tiny_server, scans, tmp_path):
    url, _ = tiny_server
    good = (scans / "p0.png").read_bytes()
    (scans / "p0.png").write_bytes(b"not an image at all")
    out = tmp_path / "t.jsonl"
    proc = run_cli("transcribe.py", str(scans), "--vllm-url", url, "--output-file", str(out), "--max-tokens", "8",
                   "--no-progress", check=False, env=eval_env(), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "images: 5" in proc.stdout and "error 1" in proc.stdout and "failed scans/p0.png: image cannot be decoded" in proc.stdout
    rows = read_transcriptions(out)
    failed = [r for r in rows if r["status"] == "error"]
    assert [r["image_path"] for r in failed] == [str(scans / "p0.png")] and failed[0]["text"] is None
    assert "cannot be decoded" in failed[0]["error"]
    kept = [r for r in rows if r["status"] != "error"]

    # the transcriptions file is a labels file; its failed row stops the import unless skipped
    with pytest.raises(GemmaOcrError, match="1 rows are failed transcriptions.*--skip-unlabeled"):
        import_records(out)
    imported = import_records(out, skip_unlabeled=True)
    assert [r.image_path for r in imported.records] == [r["image_path"] for r in kept]
    assert [r.text for r in imported.records] == [r["text"] for r in kept] and len(imported.unlabeled) == 1

    # fixed, a rerun requests only that image
    (scans / "p0.png").write_bytes(good)
    proc = run_cli("transcribe.py", str(scans), "--vllm-url", url, "--output-file", str(out), "--max-tokens", "8",
                   "--no-progress", env=eval_env())
    assert "requested now 1, resumed 4" in proc.stdout and "error 0" in proc.stdout
    assert [r["status"] != "error" for r in read_transcriptions(out)] == [True] * 5


def test_retries_and_model_check(scans, tmp_path):
    out = tmp_path / "t.jsonl"
    with ScriptedServer([503]) as s:
        result = transcribe(_cfg(s.url, [scans / "p1.png"], out, backoff_base=0.01))
        assert s.requests == 2 and result.rows[0]["text"] == "hello" and result.rows[0]["status"] == "ok"
        # a second run on other images into the same file keeps the first one's rows
        result = transcribe(_cfg(s.url, [scans / "p2.png", scans / "p1.png"], out))
        assert s.requests == 3 and (result.requested, result.resumed) == (1, 1)
        assert [r["image_path"] for r in read_transcriptions(out)] == [str(scans / "p2.png"), str(scans / "p1.png")]
        transcribe(_cfg(s.url, [scans / "p0.png"], out))
        assert [Path(r["image_path"]).name for r in read_transcriptions(out)] == ["p2.png", "p1.png", "p0.png"]
        transcribe(_cfg(s.url, [scans / "p0.png"], out, resume=False))
        assert [Path(r["image_path"]).name for r in read_transcriptions(out)] == ["p0.png"]
    with ScriptedServer([], model="other") as s, pytest.raises(GemmaOcrError, match="holds transcriptions of model 'm'"):
        transcribe(_cfg(s.url, [scans / "p1.png"], out))
    with ScriptedServer([]) as s, pytest.raises(GemmaOcrError, match="end its name in .jsonl"):
        transcribe(_cfg(s.url, [scans], tmp_path / "t.json"))


def test_cli_errors_are_one_line(tmp_path):
    proc = run_cli("transcribe.py", str(tmp_path / "nowhere"), check=False)
    assert_one_line_error(proc, "no such image, folder or OCR data file")
    proc = run_cli("transcribe.py", str(tmp_path), "--backend", "khmer-cnn", check=False)
    assert_one_line_error(proc, "--checkpoint")


@pytest.mark.parametrize("content, fragment", [
    ("caf\xe9\n".encode("latin-1"), "t.jsonl: not UTF-8 text"),
    (b'{"image_path": "p1.png", "text": 5, "status": "ok"}\n', "line 1 field 'text' is 5, not a string"),
])
def test_a_damaged_transcriptions_file_is_one_line(content, fragment, scans, tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_bytes(content)
    with ScriptedServer([]) as s:
        proc = run_cli("transcribe.py", str(scans / "p1.png"), "--vllm-url", s.url, "--output-file", str(out),
                       "--no-progress", check=False, env=eval_env())
    assert_one_line_error(proc, fragment, "choose another --output-file or pass --no-resume")
    assert out.read_bytes() == content


def test_a_list_of_image_paths_is_enough_and_errors_name_transcribes_flags(scans, tmp_path):
    """Data-file inputs need no texts; a missing image is a failed row; an unusual column is --image-key, a flag transcribe has."""
    (scans / "list.txt").write_text("p1.png\nb/p3.png\ngone.png\n", encoding="utf-8")
    (scans / "list.csv").write_text("File_Name\np2.png\n", encoding="utf-8")
    (scans / "odd.csv").write_text("scan,notes\np0.png,blurry\n", encoding="utf-8")
    out = tmp_path / "t.jsonl"
    with ScriptedServer([]) as s:
        result = transcribe(_cfg(s.url, [scans / "list.txt", scans / "list.csv"], out))
        assert [Path(r["image_path"]).name for r in result.rows] == ["p1.png", "p3.png", "gone.png", "p2.png"]
        assert [r["status"] for r in result.rows] == ["ok", "ok", "error", "ok"] and s.requests == 3
        assert "image not found" in result.rows[2]["error"]
        proc = run_cli("transcribe.py", str(scans / "odd.csv"), "--vllm-url", s.url, "--output-file", str(out),
                       check=False, env=eval_env())
        assert_one_line_error(proc, "no image column/key among scan, notes", "--image-key NAME")
        proc = run_cli("transcribe.py", str(scans / "odd.csv"), "--image-key", "scan", "--vllm-url", s.url,
                       "--output-file", str(out), "--no-progress", env=eval_env())
        assert "images: 1" in proc.stdout and "error 0" in proc.stdout


def test_an_unwritable_output_is_refused_before_any_request(scans, tmp_path):
    from tests.helpers.output_locations import read_only_folder

    with ScriptedServer([]) as s, read_only_folder(tmp_path / "ro") as ro:
        proc = run_cli("transcribe.py", str(scans), "--vllm-url", s.url, "--output-file", str(ro / "t.jsonl"),
                       check=False, env=eval_env())
        assert_one_line_error(proc, "--output-file", "cannot write in")
        assert s.requests == 0
