"""Bring your own data: a folder of images with their transcriptions, or a labels file, as OCR records.

Sources that :func:`import_records` reads:

* **a folder**: every image in it and its sub-folders (hidden ones left out) (``.png .jpg .jpeg .tif .tiff .bmp .webp``), each with
  its transcription in a UTF-8 text file beside it: ``line_001.png`` + ``line_001.gt.txt`` (the OCR-D /
  Tesseract training layout) or ``line_001.txt``;
* **a labels file** naming image paths (relative to the labels file's folder, or to ``image_root``) and texts:

  - ``.tsv`` / ``.txt``: one ``path<TAB>text`` per line (PaddleOCR's recognition layout), an optional header;
  - ``.csv``: a header row with an image column and a text column;
  - ``.jsonl``: one object per line with an image key and a text key;
  - ``.json``: either of the project's own layouts (:mod:`gemma_ocr.data.records`).

Column and key names are recognised from :data:`IMAGE_KEYS` / :data:`TEXT_KEYS` (any case), or given.
Transcriptions keep their inner line breaks; line breaks around them and a UTF-8 byte-order mark are dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gemma_ocr.data.records import LABELS_FILE_SUFFIXES, OcrRecord, load_records, resolve_image_path
from gemma_ocr.errors import GemmaOcrError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TRANSCRIPTION_SUFFIXES = (".gt.txt", ".txt")  # tried in this order
IMAGE_KEYS = ("image_path", "img_path", "image", "file_name", "filename", "file", "path")
TEXT_KEYS = ("ocr_text", "ocr_results", "text", "transcription", "label", "gt")


@dataclass
class ImportResult:
    """The records read from a source, and what was left out or is worth a look."""

    records: list[OcrRecord]
    source_kind: str
    unlabeled: list[str] = field(default_factory=list)  # folder images without a transcription (skipped)

    @property
    def empty_texts(self) -> int:
        return sum(1 for r in self.records if not r.text.strip())


def import_records(source: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   image_key: str | None = None, text_key: str | None = None,
                   skip_unlabeled: bool = False) -> ImportResult:
    """Read OCR records (absolute image paths, texts) from a folder or a labels file; see the module doc."""
    source = Path(source).expanduser()
    labels_options = image_root is not None or bool(image_key or text_key)
    if source.is_dir():
        if labels_options:
            raise GemmaOcrError(f"{source}: --image-root, --image-key and --text-key go with a labels file, not a folder")
        return _from_folder(source, skip_unlabeled)
    if not source.is_file():
        raise GemmaOcrError(f"{source}: no such folder or labels file (give a folder of images with .gt.txt/.txt "
                            f"transcriptions, or a .tsv/.csv/.jsonl/.json labels file)")
    suffix = source.suffix.lower()
    if suffix not in (*LABELS_FILE_SUFFIXES, ".json"):
        raise GemmaOcrError(f"{source}: unknown labels file type {suffix or '(none)'!r} "
                            f"(use one of {', '.join(LABELS_FILE_SUFFIXES)}, .json, or give the folder of images)")
    if suffix == ".json":
        if labels_options:
            raise GemmaOcrError(f"{source}: a .json file uses the project's own keys; --image-root, --image-key "
                                f"and --text-key go with .tsv/.csv/.jsonl files")
        return ImportResult(load_records(source), "json")
    base = Path(image_root).expanduser().resolve() if image_root is not None else source.parent.resolve()
    if suffix == ".csv":
        rows, kind = _csv_rows(source, image_key, text_key), "csv"
    elif suffix == ".jsonl":
        rows, kind = _jsonl_rows(source, image_key, text_key), "jsonl"
    else:
        if image_key or text_key:
            raise GemmaOcrError(f"{source}: a tab-separated file has no keys; --image-key and --text-key go with .csv/.jsonl")
        rows, kind = _tsv_rows(source), "tsv"
    records = [OcrRecord(resolve_image_path(image, base), _clean(text)) for image, text in rows]
    _check_listed_images_exist(records, source, image_root)
    return ImportResult(records, kind)


# ------------------------------------------------------------------------------------------------ folder

def transcription_of(image: Path) -> Path | None:
    """The text file beside ``image`` holding its transcription (``.gt.txt`` first, then ``.txt``), or None."""
    for suffix in TRANSCRIPTION_SUFFIXES:
        candidate = image.with_name(image.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _from_folder(folder: Path, skip_unlabeled: bool) -> ImportResult:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not images:
        raise GemmaOcrError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
    records: list[OcrRecord] = []
    unlabeled: list[str] = []
    for image in images:
        text_file = transcription_of(image)
        if text_file is None:
            unlabeled.append(str(image.relative_to(folder)))
            continue
        records.append(OcrRecord(str(image.resolve()), _clean(_read_text(text_file))))
    if unlabeled and not skip_unlabeled:
        example = Path(unlabeled[0])
        raise GemmaOcrError(
            f"{folder}: {len(unlabeled)} of {len(images)} images have no transcription beside them, e.g. {example} "
            f"(add {example.stem}.gt.txt or {example.stem}.txt with its text, or pass --skip-unlabeled)")
    if not records:
        raise GemmaOcrError(f"{folder}: none of its {len(images)} images has a transcription (.gt.txt or .txt beside it)")
    return ImportResult(records, "folder", unlabeled)


def _clean(text: str) -> str:
    return text.strip("\r\n")


def _read_text(path: Path) -> str:
    """A transcription or labels file as text (line breaks as ``\\n``, no byte-order mark), or one clear error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GemmaOcrError(f"{path}: not UTF-8 text (save it as UTF-8)") from None


# ------------------------------------------------------------------------------------------------ labels files

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a labels file."""
    return enumerate(_read_text(path).split("\n"), start=1)


def _tsv_rows(path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        if "\t" not in line:
            raise GemmaOcrError(f"{path}: line {number} has no tab between the image path and the text "
                                f"(write each line as path<TAB>text)")
        image, text = line.split("\t", 1)
        if not rows and image.strip().lower() in IMAGE_KEYS and text.strip().lower() in TEXT_KEYS:
            continue  # a header line
        rows.append((_image_field(image, path, f"line {number}"), text))
    return _nonempty(rows, path)


def _pick(names: Iterable[str], wanted: str | None, known: tuple[str, ...], what: str, path: Path) -> str:
    names = list(names)
    if wanted:
        if wanted not in names:
            raise GemmaOcrError(f"{path}: no {what} column/key {wanted!r} (found {', '.join(names) or 'none'})")
        return wanted
    by_lower = {n.strip().lower(): n for n in names}
    for key in known:
        if key in by_lower:
            return by_lower[key]
    flag = "--image-key" if what == "image" else "--text-key"
    raise GemmaOcrError(f"{path}: no {what} column/key among {', '.join(names) or 'none'} "
                        f"(name it one of {', '.join(known)}, or pass {flag} NAME)")


def _csv_rows(path: Path, image_key: str | None, text_key: str | None) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        names = reader.fieldnames or []
        image_col = _pick(names, image_key, IMAGE_KEYS, "image", path)
        text_col = _pick(names, text_key, TEXT_KEYS, "text", path)
        rows = [(_image_field(row.get(image_col), path, f"row {reader.line_num}"), row.get(text_col) or "")
                for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except csv.Error as e:
        raise GemmaOcrError(f"{path}: malformed CSV ({e}; fix the file's quoting)") from None
    return _nonempty(rows, path)


def _jsonl_rows(path: Path, image_key: str | None, text_key: str | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    keys: tuple[str, str] | None = None
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise GemmaOcrError(f"{path}: line {number} is not JSON ({e.msg}; write one object per line)") from None
        if not isinstance(item, dict):
            raise GemmaOcrError(f"{path}: line {number} is {type(item).__name__}, not an object")
        if keys is None:
            keys = (_pick(item, image_key, IMAGE_KEYS, "image", path), _pick(item, text_key, TEXT_KEYS, "text", path))
        missing = [k for k in keys if k not in item]
        if missing:
            raise GemmaOcrError(f"{path}: line {number} lacks key {', '.join(repr(k) for k in missing)}")
        text = item[keys[1]]
        if text is not None and not isinstance(text, str):
            raise GemmaOcrError(f"{path}: line {number} key {keys[1]!r} must be a string, got {type(text).__name__}")
        rows.append((_image_field(item[keys[0]], path, f"line {number}"), text or ""))
    return _nonempty(rows, path)


def _image_field(value: object, path: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GemmaOcrError(f"{path}: {where} has no image path (every entry needs one)")
    return value.strip()


def _nonempty(rows: list[tuple[str, str]], path: Path) -> list[tuple[str, str]]:
    if not rows:
        raise GemmaOcrError(f"{path}: no entries (the labels file is empty)")
    return rows


def _check_listed_images_exist(records: list[OcrRecord], source: Path, image_root: object) -> None:
    missing = [r.image_path for r in records if not os.path.isfile(r.image_path)]
    if missing:
        fix = "fix the paths" if image_root is not None else "fix the paths, or pass --image-root FOLDER they are relative to"
        raise GemmaOcrError(f"{source}: {len(missing)} of {len(records)} listed images do not exist, "
                            f"e.g. {missing[0]} ({fix})")
