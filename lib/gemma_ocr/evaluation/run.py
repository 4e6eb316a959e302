"""Threaded evaluation client of an OpenAI-compatible chat-completions endpoint (vLLM, the embedded server).

Each image goes as a base64 data URL with the instruction in one chat-completions request
(temperature 0, token log-probabilities asked for). Workers share one ``requests.Session`` (a
connection pool per server); several server URLs share the load round-robin. A request is retried
only on connection errors, timeouts and HTTP 408/429/5xx, with exponential backoff and jitter.
Every sample ends with a status: ``ok``, ``empty`` (the model answered nothing: scored as an empty
prediction), ``truncated`` (cut at max_tokens), ``repetition`` (a repetition loop; the rule is in
:mod:`gemma_ocr.scoring.degenerate`) or ``error`` (the request failed, or the image is missing/corrupt:
recorded with its message, never scored, retried when the run is resumed). Truncated and repetition
answers are scored like the others and counted apart; ``retry_temperature`` asks for them once more
at that temperature (off by default). An answer records its ``finish_reason`` and, where the server
returns log-probabilities, the mean and the minimum log-probability of its tokens (its confidence).

Results are written atomically every ``save_interval`` finished samples and at the end, in the
layout of :mod:`gemma_ocr.scoring.results`. Rerunning the same command resumes: samples already ``ok``
(or truncated/repetition) are kept as they are, ``error`` and missing ones are requested again. A rerun never
shrinks a results file: one that holds samples this run would not keep (a smaller ``top_k``, a
changed data file) is refused. When every worker's requests time out in a row, or every server
refuses connections, the run stops early with what it saved.

The pieces: :mod:`~gemma_ocr.evaluation.settings` (the flags), :mod:`~gemma_ocr.evaluation.client` (the HTTP client),
:mod:`~gemma_ocr.evaluation.pool` (the worker pool and the engines' reader), :mod:`~gemma_ocr.evaluation.resume`
(what a rerun keeps). :mod:`gemma_ocr.evaluation.transcription` sends unlabelled images through the same pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_ocr.data.records import OcrRecord, check_unique_images, load_records
from gemma_ocr.evaluation.pool import open_reader, server_gone_error
from gemma_ocr.evaluation.resume import resumable_samples
from gemma_ocr.evaluation.settings import EvalConfig, check_settings
from gemma_ocr.io import atomic_write_json, check_writable
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.scoring.degenerate import STATUS_RULES
from gemma_ocr.scoring.results import STATUS_ERROR, build_document

log = logging.getLogger(__name__)


@dataclass
class EvalOutcome:
    """What a run did: the results document and how many samples it requested now."""

    document: dict[str, Any]
    output_file: Path
    requested: int
    resumed: int
    elapsed_s: float
    model_name: str
    selected: int
    dataset_size: int
    stats: dict[str, Any] = field(default_factory=dict)


def _select(cfg: EvalConfig) -> tuple[list[OcrRecord], list[OcrRecord]]:
    """(all records of the data file, the first ``top_k`` of them), after the settings and the output are checked."""
    check_settings(cfg)
    output = {cfg.flag("output_file") or "output file": cfg.output_file}
    check_outputs_not_inputs({f"the data file ({cfg.flag('data_file') or 'data_file'})": cfg.data_file}, output)
    check_writable(cfg.output_file, cfg.flag("output_file") or "output file")
    records = load_records(cfg.data_file)
    if Path(cfg.output_file).exists():  # a file that is not there is no image of the data
        check_outputs_not_inputs({"an image of the data file": [r.image_path for r in records]}, output)
    check_unique_images(records, cfg.data_file)  # a repeated image would be scored twice
    return records, records if cfg.top_k is None else records[: cfg.top_k]


def evaluate(cfg: EvalConfig, on_sample: Callable[[dict[str, Any]], None] | None = None) -> EvalOutcome:
    """Run (or resume) an evaluation with the served model or the OCR engine of ``cfg.backend``, and write its
    results file; return what happened."""
    records, selected = _select(cfg)
    output = Path(cfg.output_file)

    reader = open_reader(cfg)
    model_name = reader.model_name
    try:
        results = resumable_samples(output, model_name, cfg, selected, len(records), generation=reader.generation,
                                    engine=reader.fields.get("engine"))
        todo = [(i, rec) for i, rec in enumerate(selected) if i not in results]
        resumed = len(results)
        if resumed:
            log.info("resuming %s: %d samples done, %d to request", output, resumed, len(todo))
        extra = {
            "data_file": str(cfg.data_file),
            "dataset_samples": len(records),
            "top_k": cfg.top_k,
            **reader.fields,
            "status_rules": STATUS_RULES,
        }

        def save(complete: bool, final: bool = False) -> dict[str, Any]:
            samples = [results[i] for i in sorted(results)]  # intervals at the end: a bootstrap per save is waste
            doc = build_document(samples, model_name, scoring=cfg, intervals=final, **extra, complete=complete,
                                 pending=len(selected) - len(samples))
            atomic_write_json(output, doc)
            return doc

        t0 = time.perf_counter()
        stats = reader.read(todo, results, save, output, on_sample)
        elapsed = time.perf_counter() - t0
        doc = save(complete=len(results) == len(selected), final=True)
        if stats.get("aborted"):
            errors = doc["status_counts"][STATUS_ERROR]
            raise server_gone_error(stats["aborted"], output, len(results) - errors, errors)
        return EvalOutcome(document=doc, output_file=output, requested=stats["requested"], resumed=resumed,
                           elapsed_s=elapsed, model_name=model_name, selected=len(selected),
                           dataset_size=len(records), stats=stats)
    finally:
        reader.close()

