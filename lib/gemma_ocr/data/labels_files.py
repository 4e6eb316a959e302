"""The readers of the text labels files: ``.tsv``/``.txt``, ``.csv`` and ``.jsonl`` (image path and text per row).

Each gives its rows as :data:`Row`: the image path as written, the text, and where the row is ("line 3") for the
errors of the importer (:mod:`gemma_ocr.data.importing`). Column and key names are recognised from
:data:`IMAGE_KEYS` / :data:`TEXT_KEYS` (any case), or given. A file that is not UTF-8, a malformed line or a missing
key is one line naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import read_json_lines

IMAGE_KEYS = ("image_path", "img_path", "image", "img", "file_name", "filename", "file", "path")
TEXT_KEYS = ("ocr_text", "ocr_results", "text", "transcription", "label", "gt")
FAILED_STATUS = "error"  # a transcriptions file's row whose request failed (gemma_ocr.scoring.results.STATUS_ERROR)


def clean_text(text: str) -> str:
    return text.strip("\r\n")


def read_text(path: Path) -> str:
    """A transcription or labels file as text (line breaks as ``\\n``, no byte-order mark), or one clear error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GemmaOcrError(f"{path}: not UTF-8 text (save it as UTF-8)") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a labels file."""
    return enumerate(read_text(path).split("\n"), start=1)


Row = tuple[str, str, str]  # (image path as written, text, where: "line 3", "row 2")


def tsv_rows(path: Path, need_text: bool = True) -> list[Row]:
    """The rows of a ``path<TAB>text`` file; a line with a second tab is refused when the texts are read."""
    rows: list[Row] = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        if "\t" not in line and need_text:
            raise GemmaOcrError(f"{path}: line {number} has no tab between the image path and the text "
                                f"(write each line as path<TAB>text)")
        image, _, text = line.partition("\t")
        if not rows and image.strip().lower() in IMAGE_KEYS and (not text or text.strip().lower() in TEXT_KEYS):
            continue  # a header line
        if need_text and "\t" in text.strip("\r\n"):
            raise GemmaOcrError(f"{path}: line {number} has {line.count(chr(9)) + 1} tab-separated fields, the format "
                                f"has two (path<TAB>text); remove the extra tab, or put texts holding a tab in a "
                                f".csv or .jsonl labels file")
        rows.append((image_field(image, path, f"line {number}"), text, f"line {number}"))
    return nonempty_rows(rows, path)


def pick_key(names: Iterable[str], wanted: str | None, known: tuple[str, ...], what: str, path: Path) -> str:
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


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number where it starts, fields)`` of each CSV record, parsed strictly (RFC 4180 quoting).

    A quote left open would swallow the lines after it into one field; it stops the import with the
    line where the field starts instead.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise GemmaOcrError(f"{path}: line {start}: a quoted field is never closed (it runs to the end of "
                                    f"the file); close the quote, or double a quote inside a field (\"\")") from None
            raise GemmaOcrError(f"{path}: line {start}: malformed CSV ({e}); fix the quoting (a quote inside a "
                                f"quoted field is written \"\")") from None
        yield start, fields


def csv_rows(path: Path, image_key: str | None, text_key: str | None, need_text: bool = True) -> list[Row]:
    records = _csv_records(path)
    header = next(records, None)
    names = header[1] if header else []
    image_col = names.index(pick_key(names, image_key, IMAGE_KEYS, "image", path))
    text_col = names.index(pick_key(names, text_key, TEXT_KEYS, "text", path)) if need_text or text_key else None
    rows: list[Row] = []
    for number, fields in records:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(names):
            raise GemmaOcrError(f"{path}: line {number} has {len(fields)} fields, the header {len(names)} "
                                f"({', '.join(names)}); quote a field that holds a comma")
        text = fields[text_col] if text_col is not None else ""
        rows.append((image_field(fields[image_col], path, f"line {number}"), text, f"line {number}"))
    return nonempty_rows(rows, path)


def jsonl_rows(path: Path, image_key: str | None, text_key: str | None,
               need_text: bool = True) -> tuple[list[Row], list[str]]:
    """The (image, text) rows, and the images of failed transcription rows (``"status": "error"``).

    Without ``need_text`` every row's image is read (failed ones too) and texts are left empty.
    """
    rows: list[Row] = []
    failed: list[str] = []
    keys: tuple[str, str] | None = None
    for number, item in read_json_lines(path, "write one JSON object per line, in UTF-8"):
        if not isinstance(item, dict):
            raise GemmaOcrError(f"{path}: line {number} is {type(item).__name__}, not an object")
        if keys is None:
            keys = (pick_key(item, image_key, IMAGE_KEYS, "image", path),
                    pick_key(item, text_key, TEXT_KEYS, "text", path) if need_text else "")
        missing = [k for k in keys if k and k not in item]
        if missing:
            raise GemmaOcrError(f"{path}: line {number} lacks key {', '.join(repr(k) for k in missing)}")
        image = image_field(item[keys[0]], path, f"line {number}")
        if not need_text:
            rows.append((image, "", f"line {number}"))
            continue
        if item.get("status") == FAILED_STATUS:
            failed.append(image)
            continue
        text = item[keys[1]]
        if text is not None and not isinstance(text, str):
            raise GemmaOcrError(f"{path}: line {number} key {keys[1]!r} must be a string, got {type(text).__name__}")
        rows.append((image, text or "", f"line {number}"))
    if not rows and failed:
        raise GemmaOcrError(f"{path}: all {len(failed)} rows are failed transcriptions (status error); "
                            f"rerun core/transcribe.py to retry them")
    return nonempty_rows(rows, path), failed


def image_field(value: object, path: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GemmaOcrError(f"{path}: {where} has no image path (every entry needs one)")
    return value.strip()


def nonempty_rows(rows: list[Row], path: Path) -> list[Row]:
    if not rows:
        raise GemmaOcrError(f"{path}: no entries (the labels file is empty)")
    return rows
