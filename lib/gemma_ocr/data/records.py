"""The OCR record format.

Two JSON layouts, both lists of objects:

* raw (``data/raw_data/ocr.json``): ``[{"img_path": ..., "ocr_results": ...}]``
* input (``data/input/*.json``, what training and evaluation read): ``[{"image_path": ..., "ocr_text": ...}]``

A record may also name its ``source`` (or ``page``): the page or document a line was cut from. Evaluation
keeps it on each sample; the bootstrap intervals then draw whole sources, and results are sliced by it.

A relative image path is resolved against the folder of the JSON file that names it. One image is one sample:
two records of the same image (:func:`image_key`: the path with links followed) are duplicates, which the
importer names (and drops with ``--dedupe``), the splitter keeps on one side, and evaluation refuses
(:func:`check_unique_images`). Other sources (a folder
of images with transcriptions, .tsv/.csv/.jsonl/.parquet labels files) come in through :mod:`gemma_ocr.data.importing`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, read_json

RAW_KEYS = ("img_path", "ocr_results")
INPUT_KEYS = ("image_path", "ocr_text")
LABELS_FILE_SUFFIXES = (".tsv", ".txt", ".csv", ".jsonl", ".parquet")  # read by gemma_ocr.data.importing


@dataclass(frozen=True)
class OcrRecord:
    """One sample: an image file and its transcription. ``image_path`` is absolute once loaded."""

    image_path: str
    text: str
    source: str | None = None  # the page or document the line comes from, where the data names one


def resolve_image_path(image_path: str, base: Path) -> str:
    """``image_path`` made absolute: a relative path resolves against ``base`` (the folder of the file naming it)."""
    p = Path(image_path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def image_key(image_path: str) -> str:
    """The identity of an image file: its absolute path with ``..`` and symbolic links resolved."""
    return os.path.realpath(os.path.expanduser(image_path))


def repeated_images(records: Sequence[OcrRecord]) -> dict[str, list[int]]:
    """The images named by more than one record: :func:`image_key` -> the records' indices, in order."""
    seen: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        seen.setdefault(image_key(record.image_path), []).append(i)
    return {key: where for key, where in seen.items() if len(where) > 1}


def shown_path(path: str) -> str:
    """``path`` as a message shows it: relative to the working folder when it lies inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative


def check_unique_images(records: Sequence[OcrRecord], source: str | os.PathLike[str], shown: int = 3) -> None:
    """Refuse, in one line naming the first ``shown``, data in which an image is more than one record.

    Each sample is one image: a repeat would be scored (and counted in every figure) twice.
    """
    repeats = repeated_images(records)
    if not repeats:
        return
    examples = "; ".join(f"{shown_path(records[where[0]].image_path)} (records {', '.join(map(str, where))})"
                         for where in list(repeats.values())[:shown])
    more = f"; and {len(repeats) - shown} more" if len(repeats) > shown else ""
    images = "1 image is" if len(repeats) == 1 else f"{len(repeats)} images are"
    raise GemmaOcrError(f"{source}: {images} listed more than once: {examples}{more}; each image must be one record "
                        f"(remove the repeats, or import the data again with python core/import_ocr_data.py --dedupe)")


def _read_data(path: Path) -> Any:
    """The JSON of an OCR data file; a folder or a labels file gets pointed to the importer."""
    if path.is_dir() or (path.is_file() and path.suffix.lower() in LABELS_FILE_SUFFIXES):
        kind = "a folder" if path.is_dir() else f"a {path.suffix.lower()} file"
        raise GemmaOcrError(f"{path} is {kind}, not an OCR JSON file: convert it first with "
                            f"python core/import_ocr_data.py {path}")
    return read_json(path, what="OCR data file")


def _parse(path: Path, keys: tuple[str, str], fix_hint: str) -> list[OcrRecord]:
    data = _read_data(path)
    if not isinstance(data, list):
        raise GemmaOcrError(f"{path}: expected a JSON list of records, got {type(data).__name__} ({fix_hint})")
    image_key, text_key = keys
    base = path.parent.resolve()
    records: list[OcrRecord] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise GemmaOcrError(f"{path}: record {i} is {type(item).__name__}, not an object ({fix_hint})")
        missing = [k for k in keys if k not in item]
        if missing:
            raise GemmaOcrError(f"{path}: record {i} lacks field {', '.join(repr(k) for k in missing)} ({fix_hint})")
        image, text = item[image_key], item[text_key]
        if not isinstance(image, str) or not image.strip():
            raise GemmaOcrError(f"{path}: record {i} field {image_key!r} must be a non-empty path string")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise GemmaOcrError(f"{path}: record {i} field {text_key!r} must be a string, got {type(text).__name__}")
        source = item.get("source", item.get("page"))
        if source is not None and (isinstance(source, bool) or not isinstance(source, (str, int))):
            raise GemmaOcrError(f"{path}: record {i} field 'source' must be a string (the page or document), "
                                f"got {type(source).__name__}")
        records.append(OcrRecord(resolve_image_path(image, base), text, None if source is None else str(source)))
    return records


def load_raw_records(path: str | os.PathLike[str]) -> list[OcrRecord]:
    """Read the raw layout ``[{img_path, ocr_results}]``."""
    return _parse(Path(path), RAW_KEYS, 'each record needs "img_path" and "ocr_results"')


def load_records(path: str | os.PathLike[str]) -> list[OcrRecord]:
    """Read the input layout ``[{image_path, ocr_text}]``; the raw layout is accepted too."""
    path = Path(path)
    data = _read_data(path)
    if isinstance(data, list) and data and isinstance(data[0], dict) and "img_path" in data[0]:
        return load_raw_records(path)
    return _parse(path, INPUT_KEYS, 'each record needs "image_path" and "ocr_text"')


def _relative_to(image_path: str, folder: Path) -> str:
    try:
        return os.path.relpath(image_path, folder)
    except ValueError:  # another drive on Windows
        return image_path


def records_to_json(records: list[OcrRecord], folder: Path, raw: bool = False) -> list[dict[str, Any]]:
    """The JSON list for ``records``, image paths made relative to ``folder``."""
    image_key, text_key = RAW_KEYS if raw else INPUT_KEYS
    return [{image_key: _relative_to(r.image_path, folder), text_key: r.text,
             **({"source": r.source} if r.source is not None else {})} for r in records]


def write_records(records: list[OcrRecord], path: str | os.PathLike[str], raw: bool = False) -> Path:
    """Write records atomically, image paths relative to the file's folder so the data can move."""
    path = Path(path)
    folder = path.parent.resolve()
    return atomic_write_json(path, records_to_json(records, folder, raw=raw))
