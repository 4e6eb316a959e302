"""Bringing your own data: folders of images with transcriptions and labels files, as a user runs the importer."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.programs import assert_one_line_error, run_cli
from gemma_ocr.data.importing import import_records
from gemma_ocr.data.records import load_raw_records, load_records
from gemma_ocr.errors import GemmaOcrError


@pytest.fixture
def scans(tmp_path, synthetic_raw) -> tuple[Path, dict[str, str]]:
    """A folder of rendered text lines, each with a NAME.gt.txt beside it, some one folder down; and name -> text."""
    folder = tmp_path / "scans"
    truth: dict[str, str] = {}
    for i, record in enumerate(load_raw_records(synthetic_raw)[:12]):
        dest = folder / ("book2" if i % 3 == 0 else "") / f"line_{i:03d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.image_path, dest)
        dest.with_name(dest.stem + ".gt.txt").write_text(record.text + "\n", encoding="utf-8")
        truth[dest.name] = record.text
    return folder, truth


def test_folder_with_sidecar_transcriptions_round_trips_to_split(tmp_path, scans):
    folder, truth = scans
    raw = tmp_path / "data/raw_data/ocr.json"
    proc = run_cli("import_ocr_data.py", str(folder), "--output", str(raw), "--check-images")
    assert f"Imported {len(truth)} samples" in proc.stdout and "(folder)" in proc.stdout and "note:" not in proc.stdout
    records = load_raw_records(raw)
    assert {Path(r.image_path).name: r.text for r in records} == truth  # trailing newline of the .gt.txt dropped
    assert all(not Path(item["img_path"]).is_absolute() for item in json.loads(raw.read_text()))  # data can move
    run_cli("split_dataset.py", "--input", str(raw), "--output-dir", str(tmp_path / "input"))
    split = load_records(tmp_path / "input/ocr_non_test.json") + load_records(tmp_path / "input/ocr_test.json")
    assert sorted(r.image_path for r in split) == sorted(r.image_path for r in records)

    again = run_cli("import_ocr_data.py", str(folder), "--output", str(raw), check=False)
    assert_one_line_error(again, "exists", "--force")  # a raw file is never overwritten by accident

    (folder / "book2" / "line_099.gt.txt").write_text("no image for me", encoding="utf-8")  # its image lost or renamed
    proc = run_cli("import_ocr_data.py", str(folder), "--output", str(raw), "--force")
    assert "note: 1 .txt files lie beside no image and were not read, e.g. book2/line_099.gt.txt" in proc.stdout
    run_cli("import_ocr_data.py", str(folder), "--output", str(raw), "--force")


def test_folder_transcription_rules(tmp_path, scans):
    folder, truth = scans
    first = sorted(folder.glob("line_*.png"))[0]
    first.with_name(first.stem + ".txt").write_text("ignored: .gt.txt wins", encoding="utf-8")
    second = sorted(folder.glob("line_*.png"))[1]
    second.with_name(second.stem + ".gt.txt").unlink()
    second.with_name(second.stem + ".txt").write_bytes("\ufeffline one\nline two\r\n".encode("utf-8"))
    hidden = folder / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(first, hidden / first.name)
    (folder / "notes.txt").write_text("not a transcription")

    result = import_records(folder)
    texts = {Path(r.image_path).name: r.text for r in result.records}
    assert texts[first.name] == truth[first.name]
    assert texts[second.name] == "line one\nline two"  # BOM and the line break around it go, the inner one stays
    assert len(result.records) == len(truth)  # the hidden copy is left out
    assert result.empty_texts == 0

    (folder / "blank.png").write_bytes(first.read_bytes())
    (folder / "blank.gt.txt").write_text("")
    assert import_records(folder).empty_texts == 1


def test_unlabeled_images_stop_the_import_unless_skipped(tmp_path, scans):
    folder, truth = scans
    shutil.copy(sorted(folder.glob("*.png"))[0], folder / "orphan.png")
    proc = run_cli("import_ocr_data.py", str(folder), "--output", str(tmp_path / "o.json"), check=False)
    assert_one_line_error(proc, "1 of", "no transcription", "orphan.png", "orphan.gt.txt", "--skip-unlabeled")
    assert not (tmp_path / "o.json").exists()
    proc = run_cli("import_ocr_data.py", str(folder), "--output", str(tmp_path / "o.json"), "--skip-unlabeled")
    assert "skipped 1 images" in proc.stdout and "orphan.png" in proc.stdout
    assert len(load_raw_records(tmp_path / "o.json")) == len(truth)


def test_labels_files_tsv_csv_jsonl(tmp_path, scans):
    folder, truth = scans
    names = sorted(truth)[:3]
    paths = [str(next(folder.rglob(n)).relative_to(folder)) for n in names]
    tsv = folder / "labels.tsv"
    tsv.write_text("image_path\ttext\n" + "".join(f"{p}\t{truth[n]}\n" for p, n in zip(paths, names)) + "\n",
                   encoding="utf-8")
    with (folder / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["File_Name", "Transcription"])
        writer.writerows([[p, "a, \"quoted\" " + truth[n]] for p, n in zip(paths, names)])
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps({"img": p, "words": truth[n]}) + "\n" for p, n in zip(paths, names)))

    from_tsv = import_records(tsv)
    assert from_tsv.source_kind == "tsv"
    assert [(Path(r.image_path).name, r.text) for r in from_tsv.records] == [(n, truth[n]) for n in names]
    from_csv = import_records(folder / "labels.csv")  # column names matched in any case
    assert [r.text for r in from_csv.records] == ['a, "quoted" ' + truth[n] for n in names]
    from_jsonl = import_records(tmp_path / "meta.jsonl", image_root=folder, image_key="img", text_key="words")
    assert [r.image_path for r in from_jsonl.records] == [r.image_path for r in from_tsv.records]

    out = tmp_path / "raw.json"
    proc = run_cli("import_ocr_data.py", str(tmp_path / "meta.jsonl"), "--image-root", str(folder),
                   "--image-key", "img", "--text-key", "words", "--output", str(out))
    assert "(jsonl)" in proc.stdout and f"--input {out}" in proc.stdout
    assert [r.text for r in load_raw_records(out)] == [truth[n] for n in names]


def _hf_dataset(images: list, texts: list[str]):
    """A Hugging Face ``datasets`` dataset with an Image feature, as OCR datasets on the Hub are published."""
    import datasets
    from datasets.table import embed_table_storage

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": images, "text": texts}, features=features)
    return dataset.with_format("arrow").map(embed_table_storage, batched=True)  # the bytes in the file, as push_to_hub does


def test_parquet_shards_with_embedded_images_round_trip(tmp_path, scans):
    """Two shards of a Hub-style dataset: the image bytes are saved as files, pixels and texts unchanged."""
    from PIL import Image

    folder, truth = scans
    names = sorted(truth)
    pictures = [Image.open(next(folder.rglob(n))) for n in names]
    pictures[0].save(tmp_path / "photo.jpg", quality=90)  # a JPEG keeps its format
    pictures[0] = Image.open(tmp_path / "photo.jpg")
    for shard, part in (("train-00000-of-00002", slice(0, 7)), ("train-00001-of-00002", slice(7, None))):
        _hf_dataset(pictures[part], [truth[n] for n in names[part]]).to_parquet(tmp_path / f"{shard}.parquet")
    import pyarrow.parquet as pq
    first = pq.read_table(tmp_path / "train-00000-of-00002.parquet").column("image")[0].as_py()
    assert first["bytes"] == (tmp_path / "photo.jpg").read_bytes() and first["path"] == "photo.jpg"

    out = tmp_path / "data/raw_data/ocr.json"
    proc = run_cli("import_ocr_data.py", str(tmp_path / "train-00000-of-00002.parquet"),
                   str(tmp_path / "train-00001-of-00002.parquet"), "--output", str(out), "--check-images")
    assert f"Imported {len(names)} samples from 2 sources (parquet)" in proc.stdout
    records = load_raw_records(out)
    assert [r.text for r in records] == [truth[n] for n in names]
    assert Path(records[0].image_path) == out.parent / "images/train-00000-of-00002/000000_photo.jpg"
    assert Path(records[0].image_path).read_bytes() == (tmp_path / "photo.jpg").read_bytes()  # saved as they were
    for record, picture in zip(records[1:], pictures[1:]):
        assert Path(record.image_path).parent.parent == out.parent / "images"  # images/<shard>/<row>_<name>.png
        with Image.open(record.image_path) as saved:
            assert saved.format == "PNG" and (saved.mode, saved.size, saved.tobytes()) == (picture.mode, picture.size, picture.tobytes())
    assert len({r.image_path for r in records}) == len(records)  # two shards never overwrite each other's files


def test_parquet_with_image_paths_and_custom_columns(tmp_path, scans):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, truth = scans
    names = sorted(truth)[:4]
    paths = [str(next(folder.rglob(n)).relative_to(folder)) for n in names]
    pq.write_table(pa.table({"id": list(range(4)), "scan": paths, "gt": [truth[n] for n in names]}), tmp_path / "l.parquet")
    with pytest.raises(GemmaOcrError, match="no image column.*--image-key"):
        import_records(tmp_path / "l.parquet", images_dir=tmp_path / "img")
    result = import_records(tmp_path / "l.parquet", image_root=folder, image_key="scan", text_key="gt",
                            images_dir=tmp_path / "img")
    assert [(Path(r.image_path).name, r.text) for r in result.records] == [(n, truth[n]) for n in names]
    assert not (tmp_path / "img").exists()  # nothing to extract: the rows name files


def test_bad_parquet_files_are_one_clear_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [b"\x89PNG not really"], "text": ["x"]}), tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"image": [b""], "label": [3]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"image": [None], "text": ["x"]}, schema=pa.schema([("image", pa.string()), ("text", pa.string())])),
                   tmp_path / "none.parquet")
    (tmp_path / "fake.parquet").write_text("image,text\n")
    for name, fragments in (("bytes.parquet", ["bytes.parquet", "row 0", "not a readable image"]),
                            ("ints.parquet", ["ints.parquet", "text column 'label'", "not strings", "--text-key"]),
                            ("none.parquet", ["none.parquet", "row 0 has no image"]),
                            ("fake.parquet", ["fake.parquet", "not a readable Parquet file"])):
        proc = run_cli("import_ocr_data.py", str(tmp_path / name), "--output", str(tmp_path / "o.json"), check=False)
        assert_one_line_error(proc, *fragments)
        assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("name, content, fragments", [
    ("l.tsv", "a.png hello\n", ["l.tsv", "line 1", "no tab", "path<TAB>text"]),
    ("l.tsv", "", ["l.tsv", "no entries"]),
    ("l.tsv", "missing.png\thello\n", ["l.tsv", "1 of 1 listed images do not exist", "missing.png", "--image-root"]),
    ("l.csv", "fname,gt\na.png,x\n", ["l.csv", "no image column", "fname, gt", "--image-key"]),
    # an unterminated quote swallowed the rows after it into one label ("first line\na.png,second\n...")
    ("l.csv", 'image_path,text\na.png,"first line\na.png,second\na.png,third\n', ["l.csv", "line 2", "never closed"]),
    ("l.csv", 'image_path,text\na.png,ok\na.png,"bad"quote\n', ["l.csv", "line 3", "malformed CSV"]),
    ("l.csv", "image_path,text\na.png,one,two\n", ["l.csv", "line 2 has 3 fields, the header 2", "quote a field"]),
    ("l.jsonl", '{"image": "a.png"}\n', ["l.jsonl", "no text column/key", "--text-key"]),
    ("l.jsonl", '{"image": "a.png", "text": "x"}\nnot json\n', ["l.jsonl", "line 2 is not JSON"]),
    ("l.jsonl", '{"image": "a.png", "text": 5}\n', ["l.jsonl", "line 1", "'text' must be a string"]),
    ("l.xlsx", "", ["l.xlsx", "unknown labels file type", ".tsv"]),
])
def test_bad_labels_files_are_one_clear_line(tmp_path, name, content, fragments):
    (tmp_path / "a.png").write_bytes(b"")  # exists; only --check-images opens it
    (tmp_path / name).write_text(content)
    proc = run_cli("import_ocr_data.py", str(tmp_path / name), "--output", str(tmp_path / "o.json"), check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "o.json").exists()


def test_a_quoted_csv_field_may_span_lines(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "l.csv").write_text('image_path,text\na.png,"two\nlines, one ""quote"""\n\na.png,x\n', encoding="utf-8")
    assert [r.text for r in import_records(tmp_path / "l.csv").records] == ['two\nlines, one "quote"', "x"]


def test_bad_sources_are_one_clear_line(tmp_path, scans):
    folder, _ = scans
    with pytest.raises(GemmaOcrError, match="no such folder or labels file"):
        import_records(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GemmaOcrError, match="no images"):
        import_records(tmp_path / "empty")
    with pytest.raises(GemmaOcrError, match="go with a labels file"):
        import_records(folder, image_key="x")
    broken = sorted(folder.glob("*.png"))[0]
    broken.write_bytes(b"not a png")
    proc = run_cli("import_ocr_data.py", str(folder), "--output", str(tmp_path / "o.json"), "--check-images", check=False)
    assert_one_line_error(proc, "image cannot be read", broken.name)
    (folder / "latin1.png").write_bytes(b"")
    (folder / "latin1.gt.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(GemmaOcrError, match="latin1.gt.txt: not UTF-8"):
        import_records(folder)


def test_stages_reading_json_point_a_folder_or_labels_file_to_the_importer(tmp_path, scans):
    folder, _ = scans
    proc = run_cli("split_dataset.py", "--input", str(folder), "--output-dir", str(tmp_path / "o"), check=False)
    assert_one_line_error(proc, "is a folder, not an OCR JSON file", "core/import_ocr_data.py")
    (tmp_path / "l.tsv").write_text("a.png\tx\n")
    with pytest.raises(GemmaOcrError, match=r"is a \.tsv file.*import_ocr_data\.py"):
        load_records(tmp_path / "l.tsv")  # what sft_gemma.py --input-data and evaluate.py --data-file read
