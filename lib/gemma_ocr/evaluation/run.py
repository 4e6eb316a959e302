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

:mod:`gemma_ocr.evaluation.transcription` sends unlabelled images through the same client (:func:`connect`,
:func:`request_all`).
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from gemma_ocr.training.config import DEFAULT_INSTRUCTION
from gemma_ocr.data.images import MAX_IMAGE_PIXELS, server_ready, upright_rgb
from gemma_ocr.data.records import OcrRecord, check_unique_images, load_records
from gemma_ocr.evaluation.engines import SERVER, Engine, EngineConfig, open_engine
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, check_writable, read_json
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.scoring.degenerate import STATUS_RULES, answer_status
from gemma_ocr.layout import LAYOUT
from gemma_ocr.scoring.results import (
    ANSWERED,
    DEGENERATE,
    STATUS_ERROR,
    STATUSES,
    ScoringConfig,
    answer_problem,
    build_document,
    sample_status,
)
from gemma_ocr.settings import FieldError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8000/v1/chat/completions"
RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
# MIME types every OpenAI-compatible server decodes; other formats are re-encoded as PNG.
_PASS_THROUGH = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
DEFAULT_MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# How evaluate.py and transcribe.py spell a setting whose flag is not ``--`` + its name with dashes.
REQUEST_FLAGS = {"urls": "--vllm-url", "resume": "--no-resume"}


@dataclass
class RequestConfig(EngineConfig):
    """What reads the images (a served model or a local engine), which server(s) to ask and how hard to try
    (evaluation and transcription alike). Fields are the flags."""

    urls: Sequence[str] = field(default=(DEFAULT_URL,), metadata={
        "aliases": ["--vllm-url"], "metavar": "URL",
        "help": "server URL(s): http://host:port, .../v1 or .../v1/chat/completions; several share the load"})
    workers: int = field(default=4, metadata={"help": "parallel requests"})
    model_name: str | None = field(default=None, metadata={
        "help": "served model name (null: the one model the server lists)"})
    save_interval: int = field(default=50, metadata={"help": "save the output file every N finished images"})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "text sent with each image"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per request"})
    max_retries: int = field(default=3, metadata={
        "help": "extra attempts of a request after connection errors, timeouts, 408/429/5xx"})
    max_tokens: int = field(default=512, metadata={"help": "longest answer in tokens"})
    logprobs: bool = field(default=True, metadata={
        "help": "ask for token log-probabilities (each answer's confidence: mean and minimum); a server that "
                "refuses them is asked without"})
    retry_temperature: float | None = field(default=None, metadata={
        "help": "ask once more at this temperature for an answer cut at max_tokens or caught in a repetition "
                "loop, and keep the retry if it is neither (None: no retry)"})
    resume: bool = field(default=True, metadata={"help": "resume an existing output file (--no-resume starts over)"})
    wait_server: float | None = field(default=None, metadata={
        "help": "seconds to wait for a server that is starting: nothing listening yet, or /health not yet 200 (None: "
                "a server that refuses connections is reported at once, one that answers but is not ready is "
                "waited for up to 10 s)"})
    backoff_base: float = field(default=0.5, metadata={"help": "first retry delay in seconds (doubles per retry)"})
    backoff_max: float = field(default=30.0, metadata={"help": "longest retry delay in seconds"})
    show_progress: bool = field(default=True, metadata={"aliases": ["--progress"],
                                                        "help": "progress bar (--no-progress: none)"})
    max_image_pixels: int | None = field(default=DEFAULT_MAX_IMAGE_PIXELS, metadata={
        "help": "an image with more pixels is that sample's error (a guard against decompression bombs; "
                "Pillow's limit by default; None: no limit)"})
    # The calling program's flag for each setting its errors may name, e.g. {"resume": "--force", "top_k":
    # "--eval-top-k"}: settings left out have no flag there. None: the flags of evaluate.py and transcribe.py.
    # Not a flag itself: set it after construction (cfg.flags = {...}).
    flags: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def flag(self, name: str) -> str:
        """The calling program's flag for setting ``name`` ("" when it has none)."""
        if self.flags is not None:
            return self.flags.get(name, "")
        return REQUEST_FLAGS.get(name) or "--" + name.replace("_", "-")

    def start_over_hint(self) -> str:
        """What to do when an existing output file cannot be resumed."""
        options = [f"choose another {self.flag('output_file')}" if self.flag("output_file") else "",
                   f"pass {self.flag('resume')} to start it over" if self.flag("resume") else ""]
        return " or ".join(o for o in options if o) or "move the file away"

    def validate(self) -> None:
        """Refuse settings that cannot work, before any server is asked (the settings layer names the flag
        or file key that set them; :func:`check_settings` names the calling program's flag)."""
        def refuse(name: str, why: str) -> FieldError:
            return FieldError(name, f"{why}, got {getattr(self, name)!r}")

        super().validate()
        if not self.urls:
            raise FieldError("urls", "needs at least one server URL")
        for name in ("workers", "save_interval", "max_tokens"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise refuse(name, "must be a whole number >= 1")
        if self.max_retries < 0:
            raise refuse("max_retries", "must be >= 0")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise refuse("timeout", "must be a number of seconds > 0")
        if self.wait_server is not None and not (math.isfinite(self.wait_server) and self.wait_server >= 0):
            raise refuse("wait_server", "must be a number of seconds >= 0, or None")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise refuse("max_image_pixels", "must be a pixel count >= 1, or None for no limit")
        if self.retry_temperature is not None and not (math.isfinite(self.retry_temperature)
                                                       and 0 < self.retry_temperature <= 2):
            raise refuse("retry_temperature", "must be a temperature above 0 and at most 2, or None for no retry")


def check_settings(cfg: RequestConfig) -> None:
    """:meth:`RequestConfig.validate` as one line naming the calling program's flag (or the setting)."""
    try:
        cfg.validate()
    except FieldError as e:
        raise GemmaOcrError(f"{cfg.flag(e.name) or f'setting {e.name!r}'} {e.why}") from None


@dataclass
class EvalConfig(RequestConfig, ScoringConfig):
    """What to evaluate, where the results go, how it is scored, and the server settings."""

    data_file: str | os.PathLike[str] = field(default=str(LAYOUT.test_json), metadata={
        "help": "[{image_path, ocr_text}] JSON"})
    output_file: str | os.PathLike[str] = field(default=str(LAYOUT.evaluation), metadata={
        "help": "results JSON (resumed if it exists)"})
    top_k: int | None = field(default=100, metadata={"help": "evaluate the first K samples; None for all"})

    def validate(self) -> None:
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise FieldError("top_k", f"must be a positive number or None, got {self.top_k}")
        super().validate()
        ScoringConfig.validate(self)


@dataclass(frozen=True)
class Endpoint:
    """One server: its base URL and the derived endpoints."""

    base: str

    @property
    def chat(self) -> str:
        return self.base + "/v1/chat/completions"

    @property
    def health(self) -> str:
        return self.base + "/health"

    @property
    def models(self) -> str:
        return self.base + "/v1/models"


def parse_url(url: str) -> Endpoint:
    """Accept ``http://host:port``, ``.../v1`` or the full ``.../v1/chat/completions`` URL."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GemmaOcrError(f"--vllm-url {url!r}: write it as http://host:port (optionally ending in /v1 or /v1/chat/completions)")
    path = parts.path
    for suffix in ("/chat/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return Endpoint(f"{parts.scheme}://{parts.netloc}{path}")


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


class ServerGone(Exception):
    """The servers stopped answering (connection refused/reset on every attempt, or every request timed out)."""


# ---------------------------------------------------------------- server checks


def _get(session: requests.Session, url: str, timeout: float) -> requests.Response:
    return session.get(url, timeout=timeout)


DEFAULT_READY_WAIT = 10.0  # seconds a server that answers, but not yet 200 on /health, is waited for by default


def connection_problem(error: requests.RequestException) -> str:
    """What a failed connection was, in words: ``connection refused (nothing listens on port 8000)``, ..."""
    text = str(error)
    if "refused" in text.lower():
        port = urlsplit(getattr(error.request, "url", "") or "").port
        return "connection refused" + (f": nothing listens on port {port}" if port else "")
    if re.search(r"name or service not known|nodename nor servname|failed to resolve|getaddrinfo", text, re.I):
        return "host name not found"
    return type(error).__name__


def wait_for_server(session: requests.Session, endpoint: Endpoint, wait_s: float | None, timeout: float = 5.0) -> None:
    """Poll ``/health`` until it answers 200 (a server without /health, 404, is accepted).

    ``wait_s`` None: a server that cannot be connected to (refused, unknown host) is reported at once, one that
    answers but is not ready is waited for up to :data:`DEFAULT_READY_WAIT` seconds; a number: that long for both.
    """
    patient = wait_s is not None
    wait = DEFAULT_READY_WAIT if wait_s is None else max(wait_s, 0.0)
    deadline = time.monotonic() + wait
    last = ""
    while True:
        try:
            r = _get(session, endpoint.health, timeout)
            if r.status_code == 200 or r.status_code == 404:
                return
            last = f"/health answered HTTP {r.status_code}"
        except requests.ConnectionError as e:
            last = connection_problem(e)
            if not patient:
                raise GemmaOcrError(
                    f"server {endpoint.base} is not reachable ({last}); start it (python core/serve.py MODEL_DIR), "
                    f"fix --vllm-url, or pass --wait-server SECONDS to wait for one that is starting") from None
        except requests.RequestException as e:
            last = f"{type(e).__name__}"
        if time.monotonic() >= deadline:
            if last.startswith("/health answered"):  # it answers, but is not ready (still loading, or broken)
                raise GemmaOcrError(f"server {endpoint.base} is not ready ({last}; waited {wait:g}s); pass "
                                    f"--wait-server SECONDS to wait longer for one that is loading, or see its log")
            raise GemmaOcrError(
                f"server {endpoint.base} is not reachable ({last}; waited {wait:g}s); start it "
                f"(python core/serve.py MODEL_DIR) or fix --vllm-url"
            )
        time.sleep(0.5)


def served_models(session: requests.Session, endpoint: Endpoint, timeout: float = 10.0) -> list[str]:
    """The model ids ``/v1/models`` lists."""
    try:
        r = _get(session, endpoint.models, timeout)
    except requests.RequestException as e:
        raise GemmaOcrError(f"server {endpoint.base}: /v1/models failed ({type(e).__name__}); check --vllm-url") from None
    if r.status_code != 200:
        raise GemmaOcrError(f"server {endpoint.base}: /v1/models answered HTTP {r.status_code}; is it an OpenAI-compatible server?")
    try:
        return [str(m["id"]) for m in r.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GemmaOcrError(f"server {endpoint.base}: /v1/models did not return an OpenAI model list") from None


def check_servers(session: requests.Session, endpoints: Sequence[Endpoint], model_name: str | None,
                  wait_s: float | None) -> str:
    """Wait for every server, then make sure each serves ``model_name`` (or pick the only model)."""
    for ep in endpoints:
        wait_for_server(session, ep, wait_s)
    for ep in endpoints:
        names = served_models(session, ep)
        if model_name is None:
            if len(names) != 1:
                raise GemmaOcrError(
                    f"server {ep.base} serves {len(names)} models ({', '.join(names) or 'none'}); pass --model-name"
                )
            model_name = names[0]
        elif model_name not in names:
            raise GemmaOcrError(
                f"model {model_name!r} is not served at {ep.base}; served: {', '.join(names) or 'none'} "
                f"(pass --model-name with one of them)"
            )
    assert model_name is not None
    return model_name


# ---------------------------------------------------------------- requests


class ImageTooLarge(GemmaOcrError):
    """An image with more pixels than the limit (Pillow's guard against decompression bombs)."""


def allow_image_pixels(max_pixels: int | None) -> None:
    """Let Pillow open images of up to ``max_pixels`` pixels (None: any), raising its decompression-bomb guard
    (``Image.MAX_IMAGE_PIXELS``, for this process) only when asked for more than it allows; never lowering it.

    :func:`encode_image` enforces ``max_pixels`` itself, naming the file.
    """
    from PIL import Image

    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def encode_image(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """The image as a data URL; a missing, undecodable or too large file raises :class:`GemmaOcrError`.

    Upright PNG/JPEG/WebP/GIF files in RGB or greyscale go as they are; any other file (TIFF, BMP, palette,
    bilevel, transparent, 16-bit, an EXIF-rotated photo) is decoded by training's rule
    (:func:`gemma_ocr.data.images.upright_rgb`) and sent as PNG, so the server never applies a conversion of its own.
    An image of more than ``max_pixels`` pixels (None: no limit) is refused before it is decoded
    (:class:`ImageTooLarge`).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise GemmaOcrError(f"image not found: {path}") from None
    except OSError as e:
        raise GemmaOcrError(f"image cannot be read: {path} ({e.strerror or e})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLarge(f"image too large: {path} ({im.width}x{im.height} = {im.width * im.height:,} "
                                    f"pixels, over the limit of {max_pixels:,} that guards against decompression bombs)")
            im.load()  # decode fully: truncated files fail here, not on the server
            mime = _PASS_THROUGH.get(fmt or "")
            if mime is None or not server_ready(im):  # the server then sees what training saw
                buf = io.BytesIO()
                upright_rgb(im).save(buf, format="PNG")
                data, mime = buf.getvalue(), "image/png"
    except UnidentifiedImageError:
        raise GemmaOcrError(f"image cannot be decoded: {path} (not an image, or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:  # Pillow's own guard (twice MAX_IMAGE_PIXELS), hit while opening
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else str(e)
        limit = f", over the limit of {max_pixels:,}" if max_pixels is not None else ""
        raise ImageTooLarge(f"image too large: {path} ({size}{limit} that guards against decompression bombs)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise GemmaOcrError(f"image cannot be decoded: {path} ({e})") from None
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def build_request(model_name: str, image_url: str, instruction: str, max_tokens: int,
                  logprobs: bool = False) -> dict[str, Any]:
    """The chat-completions body: one user turn with the image then the instruction, greedy decoding
    (``logprobs``: with each generated token's log-probability)."""
    body = {
        "model": model_name,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": instruction},
                ],
            }
        ],
        "temperature": 0.0,
        "max_tokens": max_tokens,
    }
    if logprobs:
        body["logprobs"] = True
    return body


@dataclass(frozen=True)
class Answer:
    """What the server answered: the text, why it ended, and its tokens' log-probabilities (None: not given)."""

    text: str
    finish_reason: str | None = None  # "stop", or "length" when cut at max_tokens
    logprobs: tuple[float, ...] | None = None

    def confidence(self) -> dict[str, float]:
        """``mean_logprob`` and ``min_logprob`` of the answer's tokens, where the server gave them."""
        if not self.logprobs:
            return {}
        mean = sum(self.logprobs) / len(self.logprobs)
        return {"mean_logprob": round(mean, 6), "min_logprob": round(min(self.logprobs), 6)}


class NoAnswer(ValueError):
    """A chat-completions response that holds no answer; ``str()`` says what is missing."""


def parse_answer(response: Any) -> Answer:
    """The :class:`Answer` of a chat-completions response; :class:`NoAnswer` naming what is missing when it has none."""
    if not isinstance(response, dict):
        raise NoAnswer(f"a JSON {type(response).__name__}, not an object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise NoAnswer("an empty 'choices' list" if isinstance(choices, list) else "no 'choices' list")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise NoAnswer("no 'message' in its first choice")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise NoAnswer(f"its message's content is a {type(content).__name__}, not text")
    given = choice.get("logprobs")
    tokens = given.get("content") if isinstance(given, dict) else None  # anything else: no confidence
    logprobs = None
    if isinstance(tokens, list) and tokens:
        values = [t.get("logprob") for t in tokens if isinstance(t, dict)]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            logprobs = tuple(float(v) for v in values)
    reason = choice.get("finish_reason")
    return Answer(content or "", reason if isinstance(reason, str) else None, logprobs)


def _without_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """The request ``body`` without its ask for log-probabilities."""
    return {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}


class _LogprobsRefused(Exception):
    """A 400/422 to a request that asked for log-probabilities: asked again without."""


class _Transient(Exception):
    def __init__(self, message: str, connection: bool):
        super().__init__(message)
        self.connection = connection


class Client:
    """Sends requests with retries, round-robin over several servers.

    Timed-out requests are counted across all workers; once ``timeout_limit`` of them come in a row
    (no answer of any kind in between), the servers are taken to be hung and :class:`ServerGone` is raised.
    Setting ``stop`` ends the retries of requests in flight.
    """

    def __init__(self, session: requests.Session, endpoints: Sequence[Endpoint], cfg: RequestConfig,
                 stop: threading.Event | None = None):
        self.session = session
        self.endpoints = list(endpoints)
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.timeout_limit = max(3, cfg.workers)
        self._timeouts_in_a_row = 0
        self._no_logprobs = False  # a server refused them once and answered without
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def _next_endpoint(self) -> Endpoint:
        with self._lock:
            return self.endpoints[next(self._rr) % len(self.endpoints)]

    def _post_once(self, body: dict[str, Any]) -> Answer:
        ep = self._next_endpoint()
        try:
            r = self.session.post(ep.chat, json=body, timeout=self.cfg.timeout)
        except requests.Timeout:
            with self._lock:
                self._timeouts_in_a_row += 1
                in_a_row = self._timeouts_in_a_row
            if in_a_row >= self.timeout_limit:
                raise ServerGone(f"{in_a_row} requests in a row got no answer within {self.cfg.flag('timeout') or 'the timeout'} "
                                 f"{self.cfg.timeout:g}s ({ep.base} answers /health but not chat completions)") from None
            raise _Transient(f"timeout after {self.cfg.timeout:g}s ({ep.base})", connection=False) from None
        except requests.ConnectionError as e:
            raise _Transient(f"connection error ({ep.base}): {type(e).__name__}", connection=True) from None
        with self._lock:
            self._timeouts_in_a_row = 0  # the server answered: it is not hung
        if r.status_code in RETRY_STATUS:
            raise _Transient(f"HTTP {r.status_code} from {ep.base}: {r.text[:200]}", connection=False)
        if r.status_code in (400, 422) and body.get("logprobs"):
            raise _LogprobsRefused(f"HTTP {r.status_code} from {ep.base}: {r.text[:300]}")
        if r.status_code != 200:
            raise GemmaOcrError(f"HTTP {r.status_code} from {ep.base}: {r.text[:300]}")
        try:
            data = r.json()
        except ValueError:
            kind = r.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
            raise GemmaOcrError(f"unexpected response from {ep.base} (HTTP 200, not JSON: {kind}): {r.text[:300]}") from None
        try:
            return parse_answer(data)
        except NoAnswer as e:
            raise GemmaOcrError(f"unexpected response from {ep.base} (no answer: {e}): {r.text[:300]}") from None

    def complete(self, body: dict[str, Any]) -> Answer:
        """The model's answer; raises :class:`_Transient` once the retries are spent (or the run stops),
        :class:`ServerGone` when the servers hang, GemmaOcrError on a 4xx. A server that refuses
        ``logprobs`` (HTTP 400/422, then answers without) is asked without them from then on."""
        attempt = 0
        while True:
            if self._no_logprobs:
                body = _without_logprobs(body)
            try:
                return self._post_once(body)
            except _LogprobsRefused as refused:
                try:
                    answer = self._post_once(_without_logprobs(body))
                except _LogprobsRefused:  # cannot happen: the body asks for none
                    raise GemmaOcrError(str(refused)) from None
                except GemmaOcrError:
                    raise GemmaOcrError(str(refused)) from None  # the same refusal: not about log-probabilities
                if not self._no_logprobs:
                    self._no_logprobs = True
                    log.warning("the server refused logprobs (%s); asking without, so answers have no confidence",
                                str(refused)[:160])
                return answer
            except _Transient:
                if attempt >= self.cfg.max_retries or self.stop.is_set():
                    raise
                delay = min(self.cfg.backoff_max, self.cfg.backoff_base * (2**attempt))
                if self.stop.wait(delay + random.uniform(0, delay)):  # full jitter on top of the exponential step
                    raise
                attempt += 1


# ---------------------------------------------------------------- the run


def _key(index: int, record: OcrRecord) -> tuple[int, str, str]:
    return (index, record.image_path, record.text)


def _settings_differ(doc: dict[str, Any], cfg: EvalConfig, generation: bool = True,
                     engine: dict[str, Any] | None = None) -> str:
    """What of ``cfg`` differs from the run that wrote ``doc`` (data file; the OCR ``engine``'s version and
    settings; instruction and max tokens when ``generation``), or ""."""
    before = doc.get("data_file")
    if before and Path(before).resolve() != Path(cfg.data_file).resolve():
        return f"data file {before}, not {cfg.data_file}"
    if engine is not None and doc.get("engine") not in (None, engine):
        return f"engine {doc['engine']}, not {engine}"
    if not generation:
        return ""
    if "instruction" in doc and doc["instruction"] != cfg.instruction:
        return f"instruction {doc['instruction']!r}, not {cfg.instruction!r}"
    generation = doc.get("generation") or {}
    tokens = generation.get("max_tokens")
    if tokens is not None and tokens != cfg.max_tokens:
        return f"{cfg.flag('max_tokens') or 'max_tokens'} {tokens}, not {cfg.max_tokens}"
    retry = generation.get("retry_temperature")
    if "retry_temperature" in generation and retry != cfg.retry_temperature:
        return f"{cfg.flag('retry_temperature') or 'retry_temperature'} {retry}, not {cfg.retry_temperature}"
    return ""


_DOCUMENT_FIELDS = {"model_name": str, "data_file": str, "instruction": str, "generation": dict, "engine": dict}


def read_results(path: Path, fix: str) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    """A results file of evaluate.py and its samples by index, every field a resume relies on checked.

    A malformed field is one line naming the file, the sample and the field, ending in ``fix``.
    """
    doc = read_json(path, "results file")
    if not isinstance(doc, dict) or not isinstance(doc.get("samples"), list):
        raise GemmaOcrError(f"{path}: not a results file of evaluate.py (no \"samples\" list); {fix}")
    for key, kind in _DOCUMENT_FIELDS.items():
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            raise GemmaOcrError(f"{path}: field {key!r} is {doc[key]!r}, not a {kind.__name__}; fix the file, or {fix}")
    samples: list[tuple[int, dict[str, Any]]] = []
    seen: set[int] = set()
    for position, sample in enumerate(doc["samples"]):
        where = f"{path}: sample {position}"
        if not isinstance(sample, dict):
            raise GemmaOcrError(f"{where} is {type(sample).__name__}, not an object; fix the file, or {fix}")
        index = sample.get("index", position)
        problem = ""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            problem = f"field 'index' is {index!r}, not a whole number >= 0"
        elif index in seen:
            problem = f"repeats index {index}"
        elif not isinstance(sample.get("image_path"), str):
            problem = f"field 'image_path' is {sample.get('image_path')!r}, not a path"
        else:
            for name in ("label", "prediction", "error"):
                if sample.get(name) is not None and not isinstance(sample[name], str):
                    problem = f"field {name!r} is {sample[name]!r}, not a string"
            if sample.get("status") is not None and sample["status"] not in STATUSES:
                problem = f"field 'status' is {sample['status']!r}, not one of {', '.join(STATUSES)}"
            problem = problem or answer_problem(sample)
        if problem:
            raise GemmaOcrError(f"{where} {problem}; fix the file, or {fix}")
        seen.add(index)
        samples.append((index, sample))
    return doc, samples


def _shrinking(path: Path, lost: list[tuple[int, dict[str, Any]]], selected: Sequence[OcrRecord], dataset_size: int,
               doc: dict[str, Any], cfg: EvalConfig) -> GemmaOcrError:
    """The refusal of a run that would drop the ``lost`` samples of ``path``."""
    hint = cfg.start_over_hint()
    changed = [(i, s) for i, s in lost if i < len(selected)]
    need = max(i for i, _ in lost) + 1
    if changed or need > dataset_size:
        i, s = (changed or lost)[0]
        return GemmaOcrError(f"{path} holds {len(lost)} samples that are not in {cfg.data_file} as it is now (e.g. sample "
                             f"{i}: {s['image_path']}); the data file changed since that run: {hint}")
    earlier = doc.get("top_k", need)
    want = "None" if earlier is None or need >= dataset_size else str(max(need, earlier if isinstance(earlier, int) else 0))
    top_k = cfg.flag("top_k") or "top_k"
    return GemmaOcrError(f"{path} holds {len(lost)} samples beyond the first {len(selected)} that {top_k} {cfg.top_k} "
                         f"selects, and a rerun never drops saved samples: rerun with {top_k} {want} to resume it, or {hint}")


def _resumable(path: Path, model_name: str, cfg: EvalConfig, selected: Sequence[OcrRecord], dataset_size: int,
               generation: bool = True, engine: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """The finished samples (all but errors) of an earlier run into ``path`` to keep, by index.

    Refused in one line: a file of another model or settings, and one holding samples this run would not keep.
    """
    if not cfg.resume or not path.is_file():
        return {}
    hint = cfg.start_over_hint()
    doc, samples = read_results(path, hint)
    previous = doc.get("model_name")
    if previous and previous != model_name:
        raise GemmaOcrError(f"{path} holds results of model {previous!r}, not {model_name!r}; {hint}")
    differs = _settings_differ(doc, cfg, generation, engine)
    if differs:
        raise GemmaOcrError(f"{path} holds results made with {differs}; rerun with the same settings to resume, or {hint}")
    wanted = {_key(i, r) for i, r in enumerate(selected)}
    lost = [(i, s) for i, s in samples if (i, s["image_path"], s.get("label") or "") not in wanted]
    if lost:
        raise _shrinking(path, lost, selected, dataset_size, doc, cfg)
    return {i: s for i, s in samples if sample_status(s) in ANSWERED}


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


def make_session(n_endpoints: int, workers: int) -> requests.Session:
    """One session whose pool keeps a connection per worker to each server."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=max(n_endpoints, 1), pool_maxsize=max(workers, 1), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def connect(cfg: RequestConfig) -> tuple[requests.Session, list[Endpoint], str]:
    """Check the request settings and wait for the servers: (session, endpoints, model name).

    The caller closes the session.
    """
    check_settings(cfg)
    endpoints = [parse_url(u) for u in cfg.urls]
    allow_image_pixels(cfg.max_image_pixels)
    session = make_session(len(endpoints), cfg.workers)
    try:
        return session, endpoints, check_servers(session, endpoints, cfg.model_name, cfg.wait_server)
    except BaseException:
        session.close()
        raise


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


@dataclass
class Reader:
    """What turns images into text for a run: the served model(s) or a local OCR engine (:func:`open_reader`)."""

    model_name: str
    fields: dict[str, Any]  # what the results document says about it
    read: Callable[..., dict[str, Any]]  # (todo, results, save, output, on_sample, desc) -> stats, as request_all
    close: Callable[[], None]
    generation: bool  # whether instruction and max_tokens shape its answers (a resumed file must match them)


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
                  engine.close, generation=False)


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
        from tqdm.auto import tqdm

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


def evaluate(cfg: EvalConfig, on_sample: Callable[[dict[str, Any]], None] | None = None) -> EvalOutcome:
    """Run (or resume) an evaluation with the served model or the OCR engine of ``cfg.backend``, and write its
    results file; return what happened."""
    records, selected = _select(cfg)
    output = Path(cfg.output_file)

    reader = open_reader(cfg)
    model_name = reader.model_name
    try:
        results = _resumable(output, model_name, cfg, selected, len(records), generation=reader.generation,
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


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], cfg: EvalConfig) -> EvalOutcome:
    """Score a Khmer-digits CNN checkpoint on ``cfg.data_file`` (no server) into the same results file.

    Every sample is predicted again (the CNN is fast and deterministic); an existing results file is
    checked as :func:`evaluate` checks it, so a rerun never shrinks it or mixes in another model's results.
    """
    from gemma_ocr.khmer_digits.backend import evaluate_ocr_file

    records, selected = _select(cfg)
    output = Path(cfg.output_file)
    name = cfg.model_name or f"khmer-digits:{checkpoint}"
    _resumable(output, name, cfg, selected, len(records), generation=False)
    t0 = time.perf_counter()
    doc = evaluate_ocr_file(checkpoint, cfg.data_file, model_name=name, top_k=cfg.top_k, scoring=cfg)
    atomic_write_json(output, doc)
    return EvalOutcome(document=doc, output_file=output, requested=len(selected), resumed=0,
                       elapsed_s=time.perf_counter() - t0, model_name=name, selected=len(selected),
                       dataset_size=len(records))


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
        except _Transient as e:
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
