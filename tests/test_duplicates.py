"""Duplicates are named: import, split, evaluate and compare on data that lists one image more than once; the
import's path and tab checks; GIFs read alike everywhere. Real files, real commands, a real local HTTP server."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.eval_fixtures import ScriptedServer
from PIL import Image, ImageDraw

from gemma_ocr.scoring.comparison import compare_documents, pair_samples
from gemma_ocr.data.importing import dedupe, find_duplicates, import_records
from gemma_ocr.data.records import OcrRecord, check_unique_images, load_raw_records, load_records
from gemma_ocr.data.split import split_non_test
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.scoring.results import ScoringConfig, build_document
from gemma_ocr.evaluation.transcription import collect_images


def _line(path: Path, text: str) -> Path:
    im = Image.new("RGB", (60, 20), "white")
    ImageDraw.Draw(im).text((2, 4), text, fill="black")
    im.save(path)
    return path


@pytest.fixture()
def images(tmp_path) -> Path:
    """``tmp_path/data/imgs/l0.png`` .. ``l11.png``; labels files go in ``tmp_path/data``."""
    folder = tmp_path / "data" / "imgs"
    folder.mkdir(parents=True)
    for i in range(12):
        _line(folder / f"l{i}.png", f"w{i}")
    return folder.parent


def _tsv(folder: Path, lines: list[str], name: str = "labels.tsv") -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ import

def test_import_refuses_conflicting_labels_and_dedupe_keeps_the_first(images, tmp_path):
    labels = _tsv(images, ["imgs/l0.png\tw0", "imgs/l1.png\tw1", "imgs/l0.png\tWRONG"])
    out = tmp_path / "raw.json"
    proc = run_cli("import_ocr_data.py", str(labels), "--output", str(out), check=False)
    assert_one_line_error(proc, "1 image is listed with different transcriptions", "imgs/l0.png", "'w0'", "'WRONG'",
                          "line 1", "line 3", "--dedupe")
    assert not out.exists()
    proc = run_cli("import_ocr_data.py", str(labels), "--output", str(out), "--dedupe")
    assert [r.text for r in load_raw_records(out)] == ["w0", "w1"]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "different transcriptions" in warnings[0] and "kept each image's first row" in warnings[0]


def test_import_warns_repeated_rows_with_counts_and_dedupe_drops_them(images, tmp_path):
    rows = [f"imgs/l{i}.png\tw{i}" for i in range(12)]
    labels = _tsv(images, rows + rows[:5])
    out = tmp_path / "raw.json"
    proc = run_cli("import_ocr_data.py", str(labels), "--output", str(out))
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stdout
    assert "5 rows repeat an image listed before with the same text (5 images)" in warnings[0]
    assert "labels.tsv line 1, " in warnings[0] and "labels.tsv line 13" in warnings[0] and "and 2 more" in warnings[0]
    assert len(load_raw_records(out)) == 17  # kept: a repeat may be meant (oversampling), and it is said
    proc = run_cli("import_ocr_data.py", str(labels), "--output", str(out), "--force", "--dedupe")
    assert "dropped 5 repeated rows" in proc.stdout
    assert [Path(r.image_path).name for r in load_raw_records(out)] == [f"l{i}.png" for i in range(12)]


def test_one_image_by_two_paths_is_a_duplicate(images):
    """``imgs/../imgs/l0.png`` and a symbolic link to l0.png name the same image."""
    os.symlink(images / "imgs" / "l0.png", images / "link.png")
    labels = _tsv(images, ["imgs/l0.png\tw0", "imgs/../imgs/l0.png\tw0", "link.png\tw0x", "imgs/l1.png\tw1"])
    result = import_records(labels)
    found = find_duplicates(result)
    assert not found.repeated and len(found.conflicting) == 1
    assert [origin for origin, _ in found.conflicting[0][1]] == [f"{labels} line {n}" for n in (1, 2, 3)]
    assert [r.text for r in dedupe(result).records] == ["w0", "w1"]


def test_duplicates_across_sources_are_found(images, tmp_path):
    (images / "imgs" / "l3.gt.txt").write_text("w3")
    labels = _tsv(images, ["imgs/l3.png\tw3 other"])
    proc = run_cli("import_ocr_data.py", str(images / "imgs"), str(labels), "--output", str(tmp_path / "raw.json"),
                   "--skip-unlabeled", check=False)
    assert_one_line_error(proc, "l3.png", "'w3'", "'w3 other'", "labels.tsv line 1")


@pytest.mark.parametrize("listed", ["../../../../../../../../etc/passwd", "/etc/passwd", "imgs/../../outside.txt"])
def test_a_listed_file_outside_the_data_folder_must_be_an_image(images, tmp_path, listed):
    (tmp_path / "outside.txt").write_text("not an image")
    labels = _tsv(images, ["imgs/l0.png\tw0", f"{listed}\troot"])
    proc = run_cli("import_ocr_data.py", str(labels), "--output", str(tmp_path / "raw.json"), check=False)
    assert_one_line_error(proc, "labels.tsv line 2", "is not an image and lies outside the labels file's folder")
    assert not (tmp_path / "raw.json").exists()


def test_a_listed_file_without_an_image_suffix_must_be_an_image(images, tmp_path):
    """Also inside the data's folder (the labels file itself), and under an --image-root as wide as /."""
    labels = _tsv(images, ["imgs/l0.png\tw0", "labels.tsv\tx"])
    with pytest.raises(GemmaOcrError, match=r"labels.tsv line 2: .*labels.tsv is not an image \(fix the image paths"):
        import_records(labels)
    labels = _tsv(images, ["etc/passwd\troot"], "root.tsv")
    proc = run_cli("import_ocr_data.py", str(labels), "--image-root", "/", "--output", str(tmp_path / "raw.json"),
                   check=False)
    assert_one_line_error(proc, "root.tsv line 1", "/etc/passwd is not an image")
    (images / "imgs" / "noext").write_bytes((images / "imgs" / "l0.png").read_bytes())  # an image by its header
    assert len(import_records(_tsv(images, ["imgs/noext\tw0"], "noext.tsv")).records) == 1


def test_images_outside_the_data_folder_are_fine(images, tmp_path):
    """Labels kept apart from their images (absolute paths, or a link to an image folder) import as before."""
    elsewhere = tmp_path / "scans"
    elsewhere.mkdir()
    _line(elsewhere / "s0.png", "s0")
    os.symlink(elsewhere, images / "linked")
    labels = _tsv(images, [f"{elsewhere / 's0.png'}\ts0", "linked/s0.png\ts0", "imgs/l1.png\tw1"], "abs.tsv")
    result = import_records(labels)
    assert [r.text for r in result.records] == ["s0", "s0", "w1"]
    assert len(find_duplicates(result).repeated) == 1  # the same file twice, by two names


def test_a_tsv_line_with_a_second_tab_is_refused(images, tmp_path):
    labels = _tsv(images, ["imgs/l0.png\tw0", "imgs/l1.png\tw1\textra"])
    proc = run_cli("import_ocr_data.py", str(labels), "--output", str(tmp_path / "raw.json"), check=False)
    assert_one_line_error(proc, "labels.tsv: line 2 has 3 tab-separated fields", "path<TAB>text", ".csv or .jsonl")
    labels = _tsv(images, ["imgs/l0.png\tw0\t"], "trailing.tsv")
    with pytest.raises(GemmaOcrError, match="line 1 has 3 tab-separated fields"):
        import_records(labels)
    # texts are not read when only the images are listed (transcribe.py): extra columns are fine there
    assert [Path(p).name for p in collect_images([images / "labels.tsv"])] == ["l0.png", "l1.png"]


# ------------------------------------------------------------------------------------------------ split

def test_split_keeps_every_record_of_an_image_on_one_side(images, tmp_path):
    rows = [f"imgs/l{i}.png\tw{i}" for i in range(12)]
    labels = _tsv(images, rows + rows)
    raw = tmp_path / "raw.json"
    run_cli("import_ocr_data.py", str(labels), "--output", str(raw))
    proc = run_cli("split_dataset.py", "--input", str(raw), "--output-dir", str(tmp_path / "input"),
                   "--non-test-ratio", "0.5")
    non_test, test = (load_records(tmp_path / "input" / f"ocr_{n}.json") for n in ("non_test", "test"))
    assert not {r.image_path for r in non_test} & {r.image_path for r in test}
    assert len(non_test) == len(test) == 12
    assert "each image's records are on one side" in proc.stdout
    assert "the test part lists 6 images more than once" in proc.stdout


def test_split_without_repeats_is_the_seed_shuffle():
    import random

    records = [OcrRecord(f"/d/{i}.png", str(i)) for i in range(60)]
    plain = list(records)
    random.Random(42).shuffle(plain)
    got = split_non_test(records)
    assert got.non_test == plain[:10] and got.test == plain[10:]
    assert split_non_test([0, 0, 1, 1], 0.5).non_test in ([0, 0], [0, 1], [1, 1], [1, 0])  # items that are not records
    assert len(split_non_test([0] * 6, 0.5).non_test) == 3  # each alone


# ------------------------------------------------------------------------------------------------ evaluate

def test_evaluate_refuses_a_repeated_image_before_any_request(images, tmp_path):
    data = images / "test.json"
    data.write_text(json.dumps([{"image_path": "imgs/l0.png", "ocr_text": "w0"},
                                {"image_path": "imgs/l1.png", "ocr_text": "w1"},
                                {"image_path": "imgs/./l0.png", "ocr_text": "w0"}]))
    out = tmp_path / "results.json"
    with ScriptedServer([]) as server:
        with pytest.raises(GemmaOcrError, match=r"1 image is listed more than once: .*l0.png \(records 0, 2\)"):
            evaluate(EvalConfig(urls=[server.url], data_file=data, output_file=out, top_k=None, show_progress=False))
        proc = run_cli("evaluate.py", "--data-file", str(data), "--output-file", str(out), "--urls", server.url,
                       check=False)
        assert_one_line_error(proc, "test.json", "listed more than once", "records 0, 2", "--dedupe")
        assert server.requests == 0 and not out.exists()
    with pytest.raises(GemmaOcrError, match="2 images are listed more than once"):
        check_unique_images([OcrRecord("/a.png", "x"), OcrRecord("/b.png", "y"), OcrRecord("/a.png", "x"),
                             OcrRecord("/b.png", "z")], "d.json")


# ------------------------------------------------------------------------------------------------ compare

LABELS = [f"line {i:04d} abc" for i in range(20)]


def _doc(predictions: list[str], name: str, extra: list[dict] | None = None) -> dict:
    samples = [{"index": i, "image_path": f"/data/{i}.png", "label": l, "prediction": p, "status": "ok"}
               for i, (l, p) in enumerate(zip(LABELS, predictions))]
    return build_document(samples + (extra or []), name, ScoringConfig(ci_resamples=100))


def test_compare_refuses_a_sample_present_twice(tmp_path):
    base = _doc(["#" + l[1:] if i % 3 == 0 else l for i, l in enumerate(LABELS)], "base")
    twice = {"index": 20, "image_path": "/data/5.png", "label": LABELS[5], "prediction": "xxxx", "status": "ok"}
    cand = _doc(LABELS, "ft", [twice])
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "ft.json").write_text(json.dumps(cand))
    proc = run_cli("compare_results.py", str(tmp_path / "base.json"), str(tmp_path / "ft.json"),
                   "--output", str(tmp_path / "cmp.json"), check=False)
    assert_one_line_error(proc, "ft.json", "1 image is in more than one sample", "/data/5.png (indexes 5, 20)")
    assert not (tmp_path / "cmp.json").exists()
    with pytest.raises(GemmaOcrError, match="base.json: 1 image is in more than one sample"):
        compare_documents([("base.json", cand), ("ft.json", base)])
    with pytest.raises(GemmaOcrError, match="the candidate"):
        pair_samples(base, cand)
    assert len(pair_samples(base, _doc(LABELS, "ft"))) == 20
    unnamed = _doc(LABELS, "x")
    for sample in unnamed["samples"][:2]:
        del sample["image_path"]
    with pytest.raises(GemmaOcrError, match=r"x.json: 2 samples name no image_path \(indexes 0, 1\)"):
        compare_documents([("base.json", base), ("x.json", unnamed)])


# ------------------------------------------------------------------------------------------------ GIFs

def _animated_gif(path: Path) -> Path:
    first, second = Image.new("RGB", (60, 20), "white"), Image.new("RGB", (60, 20), "black")
    ImageDraw.Draw(first).text((2, 4), "ab", fill="black")
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    return path


def test_an_animated_gif_is_read_by_its_first_frame_everywhere(images, tmp_path):
    gif = _animated_gif(images / "imgs" / "anim.gif")
    (images / "imgs" / "anim.gt.txt").write_text("ab")
    (images / "imgs" / "scan.heic").write_bytes(b"not read")
    for i in range(12):
        (images / "imgs" / f"l{i}.gt.txt").write_text(f"w{i}")
    # a folder: imported and transcribed with the GIF, the file of another type named
    proc = run_cli("import_ocr_data.py", str(images / "imgs"), "--output", str(tmp_path / "raw.json"), "--check-images")
    assert "Imported 13 samples" in proc.stdout and "scan.heic" in proc.stdout
    assert str(gif) in {r.image_path for r in load_raw_records(tmp_path / "raw.json")}
    assert str(gif) in collect_images([images / "imgs"]) and collect_images([gif]) == [str(gif)]
    # evaluate sends the first frame as PNG (a server might read another frame, or refuse the animation)
    data = images / "gif.json"
    data.write_text(json.dumps([{"image_path": "imgs/anim.gif", "ocr_text": "ab"}]))
    with ScriptedServer([], answers=[{"content": "ab", "finish_reason": "stop"}]) as server:
        doc = evaluate(EvalConfig(urls=[server.url], data_file=data, output_file=tmp_path / "r.json", top_k=None,
                                  show_progress=False))
        url = server.bodies[0]["messages"][0]["content"]
        url = next(part["image_url"]["url"] for part in (url if isinstance(url, list) else [])
                   if part.get("type") == "image_url")
    assert doc.document["samples"][0]["status"] == "ok"
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    with Image.open(gif) as im:
        assert sent.convert("RGB").tobytes() == im.convert("RGB").tobytes()  # frame 0, not the black frame 1


def test_count_score_refuses_a_sample_present_twice(tmp_path):
    """Rescoring a results file with an image in two samples would count it twice in every figure."""
    twice = {"index": 20, "image_path": "/data/5.png", "label": LABELS[5], "prediction": "xxxx", "status": "ok"}
    (tmp_path / "ft.json").write_text(json.dumps(_doc(LABELS, "ft", [twice])))
    proc = run_cli("count_score.py", "--input", str(tmp_path / "ft.json"), "--output", str(tmp_path / "norm.json"),
                   check=False)
    assert_one_line_error(proc, "ft.json", "1 image is in more than one sample", "/data/5.png (indexes 5, 20)")
    assert not (tmp_path / "norm.json").exists()
    (tmp_path / "ok.json").write_text(json.dumps(_doc(LABELS, "ft")))
    assert run_cli("count_score.py", "--input", str(tmp_path / "ok.json"), "--output", str(tmp_path / "norm.json")
                   ).returncode == 0
