"""The worker pool of a run: images read into samples by the served model(s) or a local OCR engine.

:func:`open_reader` opens what ``backend`` names (:class:`Reader`); :func:`request_all` sends images through a pool
of workers to the servers, :func:`read_with_engine` reads them with an engine. Every sample ends with a status:
``ok``, ``empty`` (the model answered nothing), ``truncated`` (cut at max_tokens), ``repetition`` (a repetition
loop; :mod:`gemma_ocr.scoring.degenerate`) or ``error`` (the request failed, or the image is missing/corrupt:
recorded with its message). ``retry_temperature`` asks once more for truncated and repetition answers. When every
worker's requests time out in a row, or every server refuses connections, the pool stops early.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm.auto import tqdm

from gemma_ocr.data.images import ImageTooLarge, allow_image_pixels
from gemma_ocr.data.records import OcrRecord
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.client import (
    Answer,
    Client,
    Endpoint,
    ServerGone,
    TransientFailure,
    build_request,
    connect,
    encode_image,
)
from gemma_ocr.evaluation.engines import SERVER, Engine, open_engine
from gemma_ocr.evaluation.settings import RequestConfig, check_settings
from gemma_ocr.scoring.degenerate import answer_status
from gemma_ocr.scoring.results import DEGENERATE, STATUS_ERROR

log = logging.getLogger(__name__)


def _sample(index: int, record: OcrRecord, answer: Answer | None, error: str | None,
            latency: float | None) -> dict[str, Any]:
    """A finished sample: the answer with its status, finish_reason and confidence, or the error."""
    s: dict[str, Any] = {"index": index, "image_path": record.image_path, "label": record.text}
    if record.source is not None:
        s["source"] = record.source
    if error is not None or answer is None:
        s.update(prediction=None, status=STATUS_ERROR, error=error or "no answer")
    else:
        s.update(prediction=answer.text, status=answer_status(answer.text, answer.finish_reason, record.text))
        if answer.finish_reason:
            s["finish_reason"] = answer.finish_reason
        s.update(answer.confidence())
    if latency is not None:
        s["latency_s"] = round(latency, 4)
    return s


def _with_retry(s: dict[str, Any], retry: dict[str, Any], temperature: float) -> dict[str, Any]:
    """``s`` after its retry at ``temperature``: the retry's answer where it is not degenerate (or failed)."""
    keep = retry if retry["status"] not in DEGENERATE | {STATUS_ERROR} else s
    answer_keys = ("prediction", "status", "finish_reason", "mean_logprob", "min_logprob", "error")
    summary = {"temperature": temperature, "kept": "retry" if keep is retry else "first",
               "first": {k: s[k] for k in answer_keys if k in s},
               "retry": {k: retry[k] for k in answer_keys if k in retry}}
    out = {k: v for k, v in s.items() if k not in answer_keys}
    out.update({k: keep[k] for k in answer_keys if k in keep})
    out["latency_s"] = round(s.get("latency_s", 0.0) + retry.get("latency_s", 0.0), 4)  # both requests
    out["retry"] = summary
    return out



def request_all(session: requests.Session, endpoints: Sequence[Endpoint], cfg: RequestConfig, model_name: str,
                todo: list[tuple[int, OcrRecord]], results: dict[int, dict[str, Any]], save: Callable[[bool], Any],
                output: Path, on_sample: Callable[[dict[str, Any]], None] | None = None,
                desc: str = "evaluate") -> dict[str, Any]:
    """Send ``todo`` through the worker pool into ``results`` (by index), calling ``save`` as it goes.

    Interrupted (Ctrl-C), what finished is saved before the interrupt goes on. Returns the pool's stats;
    ``stats["aborted"]`` says why it stopped early when every server went away or hung.
    """
    stop = threading.Event()
    client = Client(session, endpoints, cfg, stop)
    try:
        return _run_pool(client, stop, cfg, model_name, todo, results, save, on_sample, desc)
    except KeyboardInterrupt:
        save(False)
        log.warning("interrupted: %d samples saved in %s; rerun the same command to resume", len(results), output)
        raise


def server_gone_error(reason: str, output: Path, finished: int, failed: int) -> GemmaOcrError:
    """The error of a run cut short because the servers stopped answering."""
    return GemmaOcrError(f"the server stopped answering ({reason}); {finished} finished samples and {failed} failed "
                         f"ones are saved in {output}; rerun the same command to resume")



@dataclass
class Reader:
    """What turns images into text for a run: the served model(s) or a local OCR engine (:func:`open_reader`)."""

    model_name: str
    fields: dict[str, Any]  # what the results document says about it
    read: Callable[..., dict[str, Any]]  # (todo, results, save, output, on_sample, desc) -> stats, as request_all
    close: Callable[[], None]
    generation: bool  # whether instruction and max_tokens shape its answers (a resumed file must match them)
    transcription_name: str = ""  # the model a transcriptions row names ("": model_name)

    @property
    def row_name(self) -> str:
        """The model a transcriptions row names."""
        return self.transcription_name or self.model_name


def open_reader(cfg: RequestConfig) -> Reader:
    """The reader ``cfg.backend`` names: servers checked and waited for, or an engine checked to be installed."""
    check_settings(cfg)
    if cfg.backend == SERVER:
        session, endpoints, model_name = connect(cfg)

        def ask(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return request_all(session, endpoints, cfg, model_name, *args, **kwargs)

        fields = {"server_urls": [ep.base for ep in endpoints], "instruction": cfg.instruction,
                  "generation": {"temperature": 0.0, "max_tokens": cfg.max_tokens, "logprobs": cfg.logprobs,
                                 "retry_temperature": cfg.retry_temperature}}
        return Reader(model_name, fields, ask, session.close, generation=True)
    allow_image_pixels(cfg.max_image_pixels)
    engine = open_engine(cfg)

    def read(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return read_with_engine(engine, cfg, *args, **kwargs)

    return Reader(cfg.model_name or engine.name, {"backend": cfg.backend, "engine": engine.describe()}, read,
                  engine.close, generation=False, transcription_name=cfg.model_name or engine.transcription_name or "")


def read_with_engine(engine: Engine, cfg: RequestConfig, todo: list[tuple[int, OcrRecord]],
                     results: dict[int, dict[str, Any]], save: Callable[[bool], Any], output: Path,
                     on_sample: Callable[[dict[str, Any]], None] | None = None, desc: str = "evaluate") -> dict[str, Any]:
    """Read ``todo`` with a local OCR engine into ``results`` (by index, the samples :func:`request_all` makes),
    saving every ``save_interval`` samples; Ctrl-C saves what finished before it goes on."""
    records = dict(todo)
    collect = _Collector(cfg, len(todo), results, save, on_sample, f"{desc} ({engine.name})")
    try:
        for index, text, error, seconds in engine.read([(i, r.image_path) for i, r in todo], cfg.workers,
                                                       cfg.max_image_pixels):
            collect.add(_sample(index, records[index], None if error is not None else Answer(text or ""), error,
                                seconds))
    except KeyboardInterrupt:
        save(False)
        log.warning("interrupted: %d samples saved in %s; rerun the same command to resume", len(results), output)
        raise
    finally:
        collect.close()
    return {"requested": len(todo), "aborted": ""}


class _Collector:
    """Finished samples into ``results`` (by index): ``on_sample``, the progress bar, a save every
    ``save_interval`` samples."""

    def __init__(self, cfg: RequestConfig, todo: int, results: dict[int, dict[str, Any]], save: Callable[[bool], Any],
                 on_sample: Callable[[dict[str, Any]], None] | None, desc: str):
        self.cfg, self.results, self.save, self.on_sample = cfg, results, save, on_sample
        self.since_save = 0
        self.bar = tqdm(total=todo + len(results), initial=len(results), desc=desc, unit="img",
                        disable=not cfg.show_progress, dynamic_ncols=True)

    def add(self, s: dict[str, Any]) -> None:
        self.results[s["index"]] = s
        if self.on_sample is not None:
            self.on_sample(s)
        self.bar.update(1)
        self.since_save += 1
        if self.since_save >= self.cfg.save_interval:
            self.save(False)
            self.since_save = 0

    def close(self) -> None:
        self.bar.close()


class _NotSent(Exception):
    """A queued request dropped because the run is stopping."""


def _run_pool(client: Client, stop: threading.Event, cfg: RequestConfig, model_name: str,
              todo: list[tuple[int, OcrRecord]], results: dict[int, dict[str, Any]], save: Callable[[bool], Any],
              on_sample: Callable[[dict[str, Any]], None] | None, desc: str) -> dict[str, Any]:
    """Send ``todo`` through a pool of workers, filling ``results``; stop early if every server is gone or hung."""
    too_large_hint = f"; {cfg.flag('max_image_pixels')} raises the limit" if cfg.flag("max_image_pixels") else ""

    def work(index: int, record: OcrRecord) -> dict[str, Any]:
        if stop.is_set():
            raise _NotSent
        t = time.perf_counter()
        try:
            url = encode_image(record.image_path, cfg.max_image_pixels)
        except ImageTooLarge as e:
            return _sample(index, record, None, f"{e}{too_large_hint}", None)
        except GemmaOcrError as e:
            return _sample(index, record, None, str(e), None)
        body = build_request(model_name, url, cfg.instruction, cfg.max_tokens, cfg.logprobs)
        s = ask(index, record, body, t)
        if cfg.retry_temperature is not None and s["status"] in DEGENERATE:
            retry = ask(index, record, {**body, "temperature": cfg.retry_temperature}, time.perf_counter())
            flags = {k: retry.pop(k) for k in ("_connection", "_gone") if k in retry}  # the pool still hears of them
            s = {**_with_retry(s, retry, cfg.retry_temperature), **flags}
        return s

    def ask(index: int, record: OcrRecord, body: dict[str, Any], t: float) -> dict[str, Any]:
        try:
            answer = client.complete(body)
        except TransientFailure as e:
            s = _sample(index, record, None, f"{e} (after {cfg.max_retries + 1} attempts)", time.perf_counter() - t)
            s["_connection"] = e.connection
            return s
        except ServerGone as e:
            s = _sample(index, record, None, f"timeout after {cfg.timeout:g}s", time.perf_counter() - t)
            s["_gone"] = str(e)
            return s
        except GemmaOcrError as e:
            return _sample(index, record, None, str(e), time.perf_counter() - t)
        return _sample(index, record, answer, None, time.perf_counter() - t)

    requested = consecutive_dead = 0
    aborted = ""
    dead_limit = max(3, cfg.workers)
    collect = _Collector(cfg, len(todo), results, save, on_sample, desc)
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="eval")
    pending: set[Future] = set()
    queue = iter(todo)
    try:
        # Keep at most 2x workers requests queued so an abort leaves the rest untouched.
        def refill() -> None:
            while len(pending) < 2 * cfg.workers and not stop.is_set():
                item = next(queue, None)
                if item is None:
                    return
                pending.add(pool.submit(work, *item))

        refill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                pending.discard(fut)
                try:
                    s = fut.result()
                except _NotSent:
                    continue
                requested += 1
                dead = s.pop("_connection", False)
                hung = s.pop("_gone", "")
                consecutive_dead = consecutive_dead + 1 if dead else 0
                collect.add(s)
                if (hung or consecutive_dead >= dead_limit) and not stop.is_set():
                    aborted = hung or s.get("error", "connection errors")
                    stop.set()
            refill()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        collect.close()
    return {"requested": requested, "aborted": aborted}
