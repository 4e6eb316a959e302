"""Bring your own data: a folder of images with their transcriptions, or a labels file, as OCR records.

Sources that :func:`import_records` reads:

* **a folder**: every image in it and its sub-folders (hidden ones left out) (``.png .jpg .jpeg .tif .tiff .bmp .webp
  .gif``; an animated GIF is read by its first frame), each with
  its transcription in a UTF-8 text file beside it: ``line_001.png`` + ``line_001.gt.txt`` (the OCR-D /
  Tesseract training layout) or ``line_001.txt``;
* **a labels file** naming image paths (relative to the labels file's folder, or to ``image_root``) and texts:

  - ``.tsv`` / ``.txt``: one ``path<TAB>text`` per line (PaddleOCR's recognition layout), an optional header; a
    line with a second tab is refused (a text holding a tab goes in a .csv or .jsonl file);
  - ``.csv``: a header row with an image column and a text column;
  - ``.jsonl``: one object per line with an image key and a text key (a transcriptions file of
    ``core/transcribe.py`` too: its rows with ``"status": "error"`` count as images without a transcription);
  - ``.parquet``: an image column and a text column, as Hugging Face ``datasets`` write them (an ``Image``
    feature holds each image's bytes, which are saved as files under ``images_dir``, or its path);
  - ``.json``: either of the project's own layouts (:mod:`gemma_ocr.data.records`).

The readers of each labels file format are :mod:`gemma_ocr.data.labels_files` (.tsv/.txt, .csv, .jsonl) and
:mod:`gemma_ocr.data.parquet_files`. Column and key names are recognised from
:data:`~gemma_ocr.data.labels_files.IMAGE_KEYS` / :data:`~gemma_ocr.data.labels_files.TEXT_KEYS` (any case), or
given. Transcriptions keep their inner line breaks; line breaks around them and a UTF-8 byte-order mark are dropped.

A listed file that lies outside the source's folder (or ``image_root``) once ``..`` and links are followed, or whose
name does not end in an image suffix, must be an image file (its header is read), so a path such as
``../../../etc/passwd`` is refused naming its line.
An image listed more than once is a duplicate (:func:`find_duplicates`): with the same text a repeated row, with
another text a conflicting label; :func:`dedupe` keeps each image's first row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_ocr.data.images import IMAGE_SUFFIXES, not_an_image
from gemma_ocr.data.labels_files import clean_text, csv_rows, jsonl_rows, read_text, tsv_rows
from gemma_ocr.data.parquet_files import parquet_records
from gemma_ocr.data.records import LABELS_FILE_SUFFIXES, OcrRecord, image_key, load_records, resolve_image_path, shown_path
from gemma_ocr.errors import GemmaOcrError

__all__ = ["IMAGE_SUFFIXES", "Duplicates", "ImportResult", "dedupe", "find_duplicates", "find_images", "import_records",
           "import_sources", "listed_images", "transcription_of"]
TRANSCRIPTION_SUFFIXES = (".gt.txt", ".txt")  # tried in this order


@dataclass
class ImportResult:
    """The records read from a source, and what was left out or is worth a look."""

    records: list[OcrRecord]
    source_kind: str
    unlabeled: list[str] = field(default_factory=list)  # images without a transcription (skipped)
    orphan_texts: list[str] = field(default_factory=list)  # a folder's .txt files beside no image (not read)
    origins: list[str] = field(default_factory=list)  # where each record comes from ("labels.tsv line 3"), in order
    other_files: list[str] = field(default_factory=list)  # a folder's files that are neither images nor .txt (not read)

    @property
    def empty_texts(self) -> int:
        return sum(1 for r in self.records if not r.text.strip())


def import_records(source: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   image_key: str | None = None, text_key: str | None = None,
                   skip_unlabeled: bool = False, images_dir: str | os.PathLike[str] | None = None) -> ImportResult:
    """Read OCR records (absolute image paths, texts) from a folder or a labels file; see the module doc.

    ``images_dir`` is where a ``.parquet`` file's embedded image bytes are written (required for those).
    """
    source = Path(source).expanduser()
    labels_options = image_root is not None or bool(image_key or text_key)
    if source.is_dir():
        if labels_options:
            raise GemmaOcrError(f"{source}: --image-root, --image-key and --text-key go with a labels file, not a folder")
        return _from_folder(source, skip_unlabeled)
    if not source.is_file():
        raise GemmaOcrError(f"{source}: no such folder or labels file (give a folder of images with .gt.txt/.txt "
                            f"transcriptions, or a .tsv/.csv/.jsonl/.parquet/.json labels file)")
    suffix = source.suffix.lower()
    if suffix not in (*LABELS_FILE_SUFFIXES, ".json"):
        raise GemmaOcrError(f"{source}: unknown labels file type {suffix or '(none)'!r} "
                            f"(use one of {', '.join(LABELS_FILE_SUFFIXES)}, .json, or give the folder of images)")
    if suffix == ".json":
        if labels_options:
            raise GemmaOcrError(f"{source}: a .json file uses the project's own keys; --image-root, --image-key "
                                f"and --text-key go with .tsv/.csv/.jsonl/.parquet files")
        records = load_records(source)
        origins = [f"{source} record {i}" for i in range(len(records))]
        _check_outside(records, origins, source.parent.resolve(), "the .json file's folder")
        return ImportResult(records, "json", origins=origins)
    base = Path(image_root).expanduser().resolve() if image_root is not None else source.parent.resolve()
    if suffix == ".parquet":
        if images_dir is None:
            raise GemmaOcrError(f"{source}: give the folder to write its embedded images to (images_dir)")
        records = parquet_records(source, image_key, text_key, base, Path(images_dir))
        origins = [f"{source} row {i}" for i in range(len(records))]
        _check_listed_images_exist(records, source, image_root)
        _check_outside(records, origins, base, _base_name(image_root), Path(images_dir))
        return ImportResult(records, "parquet", origins=origins)
    failed: list[str] = []
    if suffix == ".csv":
        rows, kind = csv_rows(source, image_key, text_key), "csv"
    elif suffix == ".jsonl":
        (rows, failed), kind = jsonl_rows(source, image_key, text_key), "jsonl"
        if failed and not skip_unlabeled:
            raise GemmaOcrError(f"{source}: {len(failed)} rows are failed transcriptions (status error), e.g. "
                                f"{failed[0]} (rerun core/transcribe.py to retry them, or pass --skip-unlabeled)")
    else:
        if image_key or text_key:
            raise GemmaOcrError(f"{source}: a tab-separated file has no keys; --image-key and --text-key go with "
                                f".csv/.jsonl/.parquet")
        rows, kind = tsv_rows(source), "tsv"
    records = [OcrRecord(resolve_image_path(image, base), clean_text(text)) for image, text, _ in rows]
    origins = [f"{source} {where}" for _, _, where in rows]
    _check_listed_images_exist(records, source, image_root)
    _check_outside(records, origins, base, _base_name(image_root))
    return ImportResult(records, kind, failed, origins=origins)


def listed_images(source: str | os.PathLike[str], image_key: str | None = None) -> list[str]:
    """The images a labels or OCR data file names (absolute paths, in order), texts not needed.

    What :mod:`gemma_ocr.evaluation.transcription` sends: a ``.tsv``/``.txt`` file may hold just one path per line,
    a ``.csv``/``.jsonl`` file just an image column/key, and images need not exist (yet).
    """
    source = Path(source).expanduser()
    suffix = source.suffix.lower()
    if suffix == ".json":
        return [r.image_path for r in load_records(source)]
    if suffix == ".csv":
        rows = csv_rows(source, image_key, None, need_text=False)
    elif suffix == ".jsonl":
        rows = jsonl_rows(source, image_key, None, need_text=False)[0]
    elif suffix in (".tsv", ".txt"):
        rows = tsv_rows(source, need_text=False)
    else:
        raise GemmaOcrError(f"{source}: image paths are read from .json, .tsv, .txt, .csv or .jsonl files, not {suffix or 'this file'}")
    base = source.parent.resolve()
    return [resolve_image_path(image, base) for image, _, _ in rows]


def import_sources(sources: Sequence[str | os.PathLike[str]], images_root: str | os.PathLike[str],
                   **options: Any) -> ImportResult:
    """Several sources' records joined in order; a ``.parquet`` source's images go to ``images_root/<its name>``.

    ``options`` are :func:`import_records`' (``image_root``, ``image_key``, ``text_key``, ``skip_unlabeled``).
    """
    results: list[ImportResult] = []
    used: set[str] = set()
    for source in sources:
        name = Path(source).stem or "source"
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        results.append(import_records(source, images_dir=Path(images_root) / unique, **options))
    if len(results) == 1:
        return results[0]
    return ImportResult([r for res in results for r in res.records],
                        "+".join(dict.fromkeys(res.source_kind for res in results)),
                        [u for res in results for u in res.unlabeled],
                        [t for res in results for t in res.orphan_texts],
                        [o for res in results for o in res.origins],
                        [f for res in results for f in res.other_files])


# ------------------------------------------------------------------------------------------------ folder

def transcription_of(image: Path) -> Path | None:
    """The text file beside ``image`` holding its transcription (``.gt.txt`` first, then ``.txt``), or None."""
    for suffix in TRANSCRIPTION_SUFFIXES:
        candidate = image.with_name(image.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _visible_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in ``folder`` and below ending in ``suffixes`` (any case), sorted; hidden files and folders left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def find_images(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its sub-folders, sorted; hidden files and folders are left out."""
    return _visible_files(folder, IMAGE_SUFFIXES)


def other_files(folder: Path) -> list[str]:
    """``folder``'s visible files (and its sub-folders') that are neither images nor ``.txt`` files, relative, sorted:
    what a folder's reader leaves out (a ``.heic`` photo, a PDF scan), worth a note."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.suffix.lower() not in (*IMAGE_SUFFIXES, ".txt") and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _from_folder(folder: Path, skip_unlabeled: bool) -> ImportResult:
    images = find_images(folder)
    if not images:
        raise GemmaOcrError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
    records: list[OcrRecord] = []
    origins: list[str] = []
    unlabeled: list[str] = []
    for image in images:
        text_file = transcription_of(image)
        if text_file is None:
            unlabeled.append(str(image.relative_to(folder)))
            continue
        records.append(OcrRecord(str(image.resolve()), clean_text(read_text(text_file))))
        origins.append(str(image))
    named = {(image.parent, image.stem) for image in images}
    orphans = [str(t.relative_to(folder)) for t in _visible_files(folder, (".txt",))
               if (t.parent, t.name.removesuffix(".txt").removesuffix(".gt")) not in named]
    if unlabeled and not skip_unlabeled:
        example = Path(unlabeled[0])
        raise GemmaOcrError(
            f"{folder}: {len(unlabeled)} of {len(images)} images have no transcription beside them, e.g. {example} "
            f"(add {example.stem}.gt.txt or {example.stem}.txt with its text, or pass --skip-unlabeled)")
    if not records:
        raise GemmaOcrError(f"{folder}: none of its {len(images)} images has a transcription (.gt.txt or .txt beside it)")
    _check_outside(records, origins, folder.resolve(), "the folder")
    return ImportResult(records, "folder", unlabeled, orphans, origins, other_files(folder))


# ------------------------------------------------------------------------------------------------ listed images

def _check_listed_images_exist(records: list[OcrRecord], source: Path, image_root: object) -> None:
    missing = [r.image_path for r in records if not os.path.isfile(r.image_path)]
    if missing:
        fix = "fix the paths" if image_root is not None else "fix the paths, or pass --image-root FOLDER they are relative to"
        raise GemmaOcrError(f"{source}: {len(missing)} of {len(records)} listed images do not exist, "
                            f"e.g. {missing[0]} ({fix})")


def _base_name(image_root: object) -> str:
    return "--image-root" if image_root is not None else "the labels file's folder"


def _check_outside(records: Sequence[OcrRecord], origins: Sequence[str], base: Path, base_name: str,
                   *also: Path, shown: int = 3) -> None:
    """Refuse, in one line naming the rows, listed files that are not images although they lie outside ``base``
    (or ``also``) once ``..`` and links are followed (``../../../etc/passwd``), or their names do not end in an
    image suffix. Only those files' headers are read: images elsewhere are fine, and an image file inside the
    data's folder is decoded where it is used."""
    roots = [image_key(str(folder)) for folder in (base, *also)]

    def inside(path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

    problems = []
    for record, origin in zip(records, origins):
        resolved = image_key(record.image_path)
        outside = not inside(resolved)
        if outside or Path(resolved).suffix.lower() not in IMAGE_SUFFIXES:
            why = not_an_image(resolved)
            if why:
                detail = "" if why == "not an image" else f" ({why.removeprefix('not an image').strip(' ()')})"
                where = f" and lies outside {base_name} ({base})" if outside else ""
                problems.append(f"{origin}: {shown_path(record.image_path)} is not an image{detail}{where}")
    if not problems:
        return
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    count = "" if len(problems) == 1 else f"{len(problems)} listed files are not images: "
    raise GemmaOcrError(f"{count}{'; '.join(problems[:shown])}{more} (fix the image paths: each must name an image "
                        f"file)")


# ------------------------------------------------------------------------------------------------ duplicates

@dataclass
class Duplicates:
    """Images listed more than once: each as (image path, [(origin, text), ...]) in the order they were listed."""

    repeated: list[tuple[str, list[tuple[str, str]]]]  # every row of the image has the same text
    conflicting: list[tuple[str, list[tuple[str, str]]]]  # the image's rows disagree on its text

    @property
    def repeated_rows(self) -> int:
        """Rows that repeat an image listed before with the same text (what --dedupe drops of them)."""
        return sum(len(rows) - 1 for _, rows in self.repeated)

    def describe_repeated(self, shown: int = 3) -> str:
        """One line: how many rows repeat an image with the same text, and the first ``shown`` (their origins)."""
        examples = "; ".join(f"{shown_path(image)} ({', '.join(o for o, _ in rows)})" for image, rows in self.repeated[:shown])
        more = f"; and {len(self.repeated) - shown} more images" if len(self.repeated) > shown else ""
        return (f"{self.repeated_rows} rows repeat an image listed before with the same text "
                f"({len(self.repeated)} images): {examples}{more}")

    def describe_conflicting(self, shown: int = 3) -> str:
        """One line: how many images are listed with different texts, and the first ``shown`` with their texts."""
        def texts(rows: list[tuple[str, str]]) -> str:
            return " vs ".join(f"{text!r} ({origin})" for origin, text in rows)

        examples = "; ".join(f"{shown_path(image)}: {texts(rows)}" for image, rows in self.conflicting[:shown])
        more = f"; and {len(self.conflicting) - shown} more" if len(self.conflicting) > shown else ""
        images = "1 image is" if len(self.conflicting) == 1 else f"{len(self.conflicting)} images are"
        return f"{images} listed with different transcriptions: {examples}{more}"

    def __bool__(self) -> bool:
        return bool(self.repeated or self.conflicting)


def find_duplicates(result: ImportResult) -> Duplicates:
    """The images ``result`` lists more than once (by :func:`image_key`), split into repeated rows (same text) and
    conflicting labels (another text)."""
    origins = result.origins or [f"record {i}" for i in range(len(result.records))]
    by_image: dict[str, list[int]] = {}
    for i, record in enumerate(result.records):
        by_image.setdefault(image_key(record.image_path), []).append(i)
    repeated, conflicting = [], []
    for where in by_image.values():
        if len(where) < 2:
            continue
        rows = [(origins[i], result.records[i].text) for i in where]
        (repeated if len({text for _, text in rows}) == 1 else conflicting).append(
            (result.records[where[0]].image_path, rows))
    return Duplicates(repeated, conflicting)


def dedupe(result: ImportResult) -> ImportResult:
    """``result`` with each image's first row only (by :func:`image_key`)."""
    seen: set[str] = set()
    keep = []
    for i, record in enumerate(result.records):
        key = image_key(record.image_path)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    origins = [result.origins[i] for i in keep] if result.origins else []
    return ImportResult([result.records[i] for i in keep], result.source_kind, result.unlabeled, result.orphan_texts,
                        origins, result.other_files)
