"""The client of an OpenAI-compatible chat-completions endpoint (vLLM, the embedded server).

Each image goes as a base64 data URL (:func:`encode_image`) with the instruction in one chat-completions request
(:func:`build_request`: temperature 0, token log-probabilities asked for). :func:`connect` checks the settings and
waits for the servers; workers share one ``requests.Session`` (a connection pool per server) and a :class:`Client`,
which shares the load round-robin over several servers. A request is retried only on connection errors, timeouts
and HTTP 408/429/5xx, with exponential backoff and jitter; when every worker's requests time out in a row the
servers are taken to be hung (:class:`ServerGone`).
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import math
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from gemma_ocr.data.images import allow_image_pixels, opened_image, read_image_bytes, server_ready, upright_rgb
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import DEFAULT_MAX_IMAGE_PIXELS, RequestConfig, check_settings

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
# MIME types every OpenAI-compatible server decodes; other formats are re-encoded as PNG.
_PASS_THROUGH = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


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


def encode_image(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """The image as a data URL; a missing, undecodable or too large file raises :class:`GemmaOcrError`.

    Upright PNG/JPEG/WebP/GIF files in RGB or greyscale go as they are; any other file (TIFF, BMP, palette,
    bilevel, transparent, 16-bit, an EXIF-rotated photo) is decoded by training's rule
    (:func:`gemma_ocr.data.images.upright_rgb`) and sent as PNG, so the server never applies a conversion of its own.
    An image of more than ``max_pixels`` pixels (None: no limit) is refused before it is decoded
    (:class:`gemma_ocr.data.images.ImageTooLarge`).
    """
    data = read_image_bytes(path)
    with opened_image(path, max_pixels, data) as im:
        mime = _PASS_THROUGH.get(im.format or "")
        if mime is None or not server_ready(im):  # the server then sees what training saw
            buf = io.BytesIO()
            upright_rgb(im).save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
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


class TransientFailure(Exception):
    """A request that failed in a way worth retrying (``connection``: the server could not be reached)."""

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
            raise TransientFailure(f"timeout after {self.cfg.timeout:g}s ({ep.base})", connection=False) from None
        except requests.ConnectionError as e:
            raise TransientFailure(f"connection error ({ep.base}): {type(e).__name__}", connection=True) from None
        with self._lock:
            self._timeouts_in_a_row = 0  # the server answered: it is not hung
        if r.status_code in RETRY_STATUS:
            raise TransientFailure(f"HTTP {r.status_code} from {ep.base}: {r.text[:200]}", connection=False)
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
        """The model's answer; raises :class:`TransientFailure` once the retries are spent (or the run stops),
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
            except TransientFailure:
                if attempt >= self.cfg.max_retries or self.stop.is_set():
                    raise
                delay = min(self.cfg.backoff_max, self.cfg.backoff_base * (2**attempt))
                if self.stop.wait(delay + random.uniform(0, delay)):  # full jitter on top of the exponential step
                    raise
                attempt += 1


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
