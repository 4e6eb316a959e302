"""Transcribe images that have no transcription yet with a served model (or an OCR engine, :mod:`gemma_ocr.evaluation.engines`).

The inputs are image files, folders (searched recursively for images) and OCR data files (the image
paths of a ``.json``/``.tsv``/``.txt``/``.csv``/``.jsonl`` file; texts are not needed, and a missing
image becomes a failed row). Requests go through the evaluation's worker pool (:mod:`gemma_ocr.evaluation.pool`:
threads, retries, several servers, the same image encoding and instruction as evaluation).

The output is a JSON Lines file, one object per image in input order::

    {"image_path": "scans/p1.png", "text": "...", "status": "ok", "model": "gemma-ocr", "latency_s": 0.41,
     "finish_reason": "stop", "mean_logprob": -0.02, "min_logprob": -0.41}

``status`` is ``ok``, ``empty`` (the model answered nothing), ``truncated`` (cut at max_tokens),
``repetition`` (a repetition loop, :mod:`gemma_ocr.scoring.degenerate`) or ``error`` (with ``error``: the
request failed or the image is unreadable; ``text`` is null). ``mean_logprob``/``min_logprob``: the
confidence of the answer's tokens, where the server returns log-probabilities. With ``review_below``
(``--review-below P``) a row gets ``"review": true`` when its least confident token has a probability
below P, or it is truncated or a repetition loop. Image paths are relative to the output file's
folder. The file is written atomically every ``save_interval`` images; rerunning the same command
resumes: answered images are kept, failed and missing ones are requested again. Rows of other
images already in the file stay (before this run's), so several runs can fill one file; ``resume=False``
(``--no-resume``) starts it over.

The file is also a labels file: after correcting the texts, ``python core/import_ocr_data.py FILE``
turns it into training data (its failed rows are left out).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_ocr.data.importing import IMAGE_SUFFIXES, LABELS_FILE_SUFFIXES, find_images, listed_images, other_files
from gemma_ocr.data.records import OcrRecord, resolve_image_path
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.pool import open_reader, server_gone_error
from gemma_ocr.evaluation.settings import RequestConfig, check_settings
from gemma_ocr.io import atomic_write_text, check_writable, read_json_lines
from gemma_ocr.layout import LAYOUT
from gemma_ocr.scoring.results import (
    ANSWERED,
    DEGENERATE,
    STATUS_ERROR,
    STATUSES,
)
from gemma_ocr.settings import FieldError

log = logging.getLogger(__name__)

DATA_FILE_SUFFIXES = (".json", ".tsv", ".txt", ".csv", ".jsonl")
ROW_ANSWER_FIELDS = ("error", "latency_s", "finish_reason", "mean_logprob", "min_logprob", "retry")


@dataclass
class TranscribeConfig(RequestConfig):
    """Which images to transcribe, where the transcriptions go, and the server settings."""

    inputs: Sequence[str | os.PathLike[str]] = field(default=(), metadata={
        "positional": True, "metavar": "INPUT",
        "help": "image files, folders of images, or OCR data files (.json/.tsv/.txt/.csv/.jsonl: their image paths; "
                "no texts needed)"})
    output_file: str | os.PathLike[str] = field(default=str(LAYOUT.transcriptions), metadata={
        "help": "JSON Lines file of the transcriptions (resumed if it exists)"})
    image_key: str | None = field(default=None, metadata={
        "help": "image column (.csv) or key (.jsonl) of data-file inputs, when not one of the usual names"})
    review_below: float | None = field(default=None, metadata={
        "metavar": "P",
        "help": "mark a row \"review\": true when its least confident token has a probability below P "
                "(0 < P <= 1), or it is truncated or a repetition loop (None: no marks)"})

    def validate(self) -> None:
        super().validate()
        if self.review_below is not None and not (0 < self.review_below <= 1):
            raise FieldError("review_below", f"must be a probability above 0 and at most 1, got {self.review_below!r}")


@dataclass
class TranscribeOutcome:
    """What a run did: one row per input image (input order) and how many were requested now."""

    rows: list[dict[str, Any]]
    output_file: Path
    model_name: str
    requested: int
    resumed: int
    elapsed_s: float

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def to_review(self) -> int:
        return sum(bool(r.get("review")) for r in self.rows)


# ---------------------------------------------------------------- inputs


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def collect_images(inputs: Sequence[str | os.PathLike[str]], image_key: str | None = None) -> list[str]:
    """Absolute image paths named by ``inputs`` (files, folders searched recursively, OCR data files), each once, in order.

    A data file's texts are not needed (a list of image paths will do); its missing images become failed rows.
    A folder's files of other types (neither images nor .txt) are left out with a warning naming how many.
    """
    if not inputs:
        raise GemmaOcrError("give at least one image, folder of images or OCR data file to transcribe")
    found: dict[str, None] = {}
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            images = find_images(path)
            if not images:
                raise GemmaOcrError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            paths = [str(p.resolve()) for p in images]
            others = other_files(path)
            if others:
                log.warning("%s: %s not images (%s) and left out, e.g. %s (convert images of other types to PNG)",
                            path, "1 file is" if len(others) == 1 else f"{len(others)} files are",
                            " ".join(IMAGE_SUFFIXES), others[0])
        elif not path.is_file():
            raise GemmaOcrError(f"{path}: no such image, folder or OCR data file")
        elif is_image_file(path):
            paths = [str(path.resolve())]
        elif path.suffix.lower() in DATA_FILE_SUFFIXES:
            paths = listed_images(path, image_key)
        else:
            kinds = ", ".join(IMAGE_SUFFIXES + DATA_FILE_SUFFIXES)
            hint = " (import a .parquet file first: python core/import_ocr_data.py)" if path.suffix.lower() in LABELS_FILE_SUFFIXES else ""
            raise GemmaOcrError(f"{path}: not an image or OCR data file (use one of {kinds}){hint}")
        found.update(dict.fromkeys(paths))
    return list(found)


# ---------------------------------------------------------------- the file


def _row(sample: dict[str, Any], model_name: str, folder: Path, review_below: float | None = None) -> dict[str, Any]:
    """The output row of a finished request (a sample of the evaluation client)."""
    row: dict[str, Any] = {"image_path": os.path.relpath(sample["image_path"], folder), "text": sample["prediction"],
                           "status": sample["status"], "model": model_name}
    for key in ROW_ANSWER_FIELDS:
        if key in sample:
            row[key] = sample[key]
    if review_below is not None and needs_review(row, review_below):
        row["review"] = True
    return row


def needs_review(row: dict[str, Any], below: float) -> bool:
    """A row to check by hand: its least confident token's probability is below ``below``, or it is
    truncated or a repetition loop."""
    if row["status"] in DEGENERATE:
        return True
    lowest = row.get("min_logprob")
    return isinstance(lowest, (int, float)) and lowest < math.log(below)


def write_transcriptions(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON Lines, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_transcriptions(path: Path, fix: str = "choose another --output-file or pass --no-resume") -> list[dict[str, Any]]:
    """The rows of a transcriptions file, image paths made absolute; a damaged file is one line ending in ``fix``."""
    rows = []
    folder = path.parent.resolve()
    for number, row in read_json_lines(path, fix, "a transcriptions file of transcribe.py"):
        if not isinstance(row, dict) or not isinstance(row.get("image_path"), str) or row.get("status") not in STATUSES:
            raise GemmaOcrError(f"{path}: line {number} is not a transcription row (image_path, text, status); {fix}")
        for name in ("text", "model", "error"):
            if row.get(name) is not None and not isinstance(row[name], str):
                raise GemmaOcrError(f"{path}: line {number} field {name!r} is {row[name]!r}, not a string; "
                                    f"fix the file, or {fix}")
        rows.append({**row, "image_path": resolve_image_path(row["image_path"], folder)})
    return rows


def _earlier_rows(path: Path, model_name: str, fix: str) -> list[dict[str, Any]]:
    """The rows of an earlier run of the same model into ``path`` (none when there is no such file)."""
    if not path.is_file():
        return []
    rows = read_transcriptions(path, fix)
    for row in rows:
        if row.get("model") not in (None, model_name):
            raise GemmaOcrError(f"{path} holds transcriptions of model {row['model']!r}, not {model_name!r}; {fix}")
    return rows


def _remarked(row: dict[str, Any], review_below: float | None) -> dict[str, Any]:
    """A kept row with its review mark as this run's ``review_below`` sets it."""
    row = {k: v for k, v in row.items() if k != "review"}
    if review_below is not None and row["status"] != STATUS_ERROR and needs_review(row, review_below):
        row["review"] = True
    return row


# ---------------------------------------------------------------- the run


def transcribe(cfg: TranscribeConfig, on_row: Callable[[dict[str, Any]], None] | None = None) -> TranscribeOutcome:
    """Transcribe (or resume transcribing) the images of ``cfg.inputs`` with the served model, or the OCR engine
    of ``cfg.backend``."""
    check_settings(cfg)
    output = Path(cfg.output_file)
    if output.suffix.lower() != ".jsonl":
        raise GemmaOcrError(f"{cfg.flag('output_file') or 'output file'} {output}: transcriptions are written as "
                            f"JSON Lines; end its name in .jsonl")
    check_writable(output, cfg.flag("output_file") or "output file")
    images = collect_images(cfg.inputs, cfg.image_key)
    folder = output.parent.resolve()
    reader = open_reader(cfg)
    model_name = reader.row_name
    try:
        earlier = _earlier_rows(output, model_name, cfg.start_over_hint()) if cfg.resume else []
        wanted = set(images)
        others = [{**r, "image_path": os.path.relpath(r["image_path"], folder)}  # kept in the file as they are
                  for r in earlier if r["image_path"] not in wanted]
        done = {r["image_path"]: r for r in earlier if r["status"] in ANSWERED}
        rows: dict[int, dict[str, Any]] = {}
        todo: list[tuple[int, OcrRecord]] = []
        for i, image in enumerate(images):
            old = done.get(image)
            if old is not None:
                rows[i] = _remarked({**old, "image_path": os.path.relpath(image, folder)}, cfg.review_below)
            else:
                todo.append((i, OcrRecord(image, "")))
        resumed = len(rows)
        if resumed:
            log.info("resuming %s: %d images done, %d to request", output, resumed, len(todo))

        def finished(sample: dict[str, Any]) -> None:  # the pool has just put ``sample`` into ``rows``
            row = _row(sample, model_name, folder, cfg.review_below)
            rows[sample["index"]] = row
            if on_row is not None:
                on_row(row)

        def save(complete: bool) -> None:
            write_transcriptions(output, others + [rows[i] for i in sorted(rows)])

        t0 = time.perf_counter()
        stats = reader.read(todo, rows, save, output, finished, desc="transcribe")
        elapsed = time.perf_counter() - t0
        save(True)
        ordered = [rows[i] for i in sorted(rows)]
        if cfg.review_below is not None and not any("min_logprob" in r for r in ordered if r["status"] != STATUS_ERROR):
            log.warning("the server returned no token log-probabilities: --review-below marked only truncated and "
                        "repetition rows")
        if stats.get("aborted"):
            failed = sum(r["status"] == STATUS_ERROR for r in ordered)
            raise server_gone_error(stats["aborted"], output, len(ordered) - failed, failed)
        return TranscribeOutcome(ordered, output, model_name, stats["requested"], resumed, elapsed)
    finally:
        reader.close()

