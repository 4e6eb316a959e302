"""The embedded OpenAI-compatible server: the project's own app on public APIs.

Routes: ``POST /v1/chat/completions`` (images as data URLs, batching, ``stop``, ``logprobs``, streaming),
``GET /health`` (503 while generation cannot proceed), ``GET /v1/models`` (the served name), ``GET /stats``
(how requests were batched). The model is loaded with ``AutoModelForImageTextToText`` and ``AutoProcessor``,
prompts are made with ``processor.apply_chat_template`` and answers with ``model.generate``
(:mod:`gemma_ocr.serving.batching`, :mod:`gemma_ocr.serving.generation`).

A chat completion takes a short path: :class:`OpenAIServer`, a plain ASGI app, reads the body itself and hands
it to :class:`ChatCompletions`; FastAPI's routing, body parsing and middleware stack (about as much CPU as a
batched request's share of generation) serve only the other routes. Every response carries the request's id
(its ``x-request-id`` header, or a new one) in that header and, for a completion, as its ``id``. A client's error
is HTTP 400 with the OpenAI error body; no request's error reaches another request or the inference thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
from fastapi import FastAPI
from starlette.responses import JSONResponse, StreamingResponse
from transformers import AutoModelForImageTextToText

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.modeling.loading import load_processor
from gemma_ocr.serving.batching import Arrival, BatchingGenerateManager
from gemma_ocr.serving.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT, MAX_CACHED_GENERATION_CONFIGS
from gemma_ocr.serving.flags import DTYPES, dtype_problem
from gemma_ocr.serving.generation import (
    ChatPrompt,
    Generation,
    GenerationJob,
    PromptError,
    TokenLogprob,
    decoding_settings,
    tokenizer_of,
)
from gemma_ocr.serving.indexed_masks import use_indexed_masks
from gemma_ocr.serving.media import MediaPolicy, image_source, needs_io
from gemma_ocr.serving.openai_api import (
    ChatRequest,
    Limits,
    RequestError,
    chunk_body,
    completion_body,
    error_body,
    openai_logprobs,
    parse_chat_request,
    usage,
)
from gemma_ocr.modeling.families import family_of_model
from gemma_ocr.modeling.thinking import ThinkingChannel, answer_ids, thinking_off

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
X_REQUEST_ID = b"x-request-id"
MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_NEW_TOKENS = 1024  # a request without max_tokens: at least this many (the checkpoint may say fewer)


def load_model(model_dir: str, device: str = "auto", dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` of a local checkpoint for serving: bf16 on CUDA, fp32 on the CPU, never fp16."""
    problem = dtype_problem(dtype)
    if problem:
        raise GemmaOcrError(problem)
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    name = DTYPES.get(dtype or "auto") or ("bfloat16" if cuda else "float32")
    processor = load_processor(model_dir)
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, name), device_map=device)
    except (OSError, ValueError) as e:
        raise GemmaOcrError(f"cannot load the model in {model_dir} ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None
    model.eval()
    use_indexed_masks(model)
    log.info("loaded %s (%s, %s)", model_dir, name, device)
    return model, processor


def model_limits(model: Any) -> Limits:
    """The context length and vocabulary size a request is checked against."""
    text = model.config.get_text_config()
    return Limits(max_tokens=getattr(text, "max_position_embeddings", None), vocab_size=getattr(text, "vocab_size", None))


class ChatCompletions:
    """``POST /v1/chat/completions`` of one served model: the request checked, queued for the inference thread,
    answered whole or as a stream."""

    def __init__(self, model: Any, processor: Any, manager: BatchingGenerateManager, served_name: str,
                 model_dir: str, media: MediaPolicy | None = None, chat_template_kwargs: dict | None = None):
        self.model, self.processor, self.manager = model, processor, manager
        self.served_name, self.model_dir = served_name, model_dir
        self.media = media or MediaPolicy()
        family = family_of_model(model.config)
        # thinking stays off unless the server's or a request's chat_template_kwargs turn it on
        self.chat_template_kwargs = {**thinking_off(family), **(chat_template_kwargs or {})}
        self.tokenizer = tokenizer_of(processor)
        self.channel = ThinkingChannel.of(family, self.tokenizer)
        self.limits = model_limits(model)
        self.configs: dict[tuple, tuple[Any, str]] = {}  # by ChatRequest.generation_key()
        self.token_texts: dict[int, str] = {}

    async def respond(self, raw: bytes, request_id: str, arrival: Arrival) -> Any:
        """The response to one request's body (``arrival``: done once the job is queued)."""
        request = parse_chat_request(parse_json(raw), self.limits)
        self.check_model(request.model)
        prompt = await self.prompt(request)
        config, settings = self.generation_config(request)
        job = GenerationJob(self.model, self.processor, None, config, request.stop, request.top_logprobs,
                            prompt=prompt, settings=settings, seed=request.seed)
        if request.stream:
            queue = self.attach_stream(job)
            self.manager.submit(job)
            arrival.done()
            first = await queue.get()  # a prompt that fails is the request's error before the stream starts
            if first is None and job.future.exception() is not None:
                raise as_request_error(job.future.exception())
            return StreamingResponse(self.events(job, request, request_id, queue, first),
                                     media_type="text/event-stream")
        future = self.manager.submit(job)
        arrival.done()
        try:
            result = await asyncio.wrap_future(future)
        except PromptError as e:
            raise as_request_error(e) from None
        return JSONResponse(self.completion(job, result, request_id))

    def check_model(self, requested: str | None) -> None:
        """The served name or the folder path; any other is 404 naming it."""
        if requested not in (None, self.served_name, self.model_dir):
            raise RequestError(f"The model `{requested}` does not exist. Served: {self.served_name}", "model",
                               status=404, error_type="NotFoundError", code="model_not_found")

    async def prompt(self, request: ChatRequest) -> ChatPrompt:
        """The chat as the processor takes it, each image as a string it reads (files and URLs checked off the
        event loop); the processor decodes them on the inference thread."""
        parts = request.images()
        if any(needs_io(p.url) for p in parts):
            sources = await asyncio.to_thread(lambda: [image_source(p, self.media) for p in parts])
        else:
            sources = [image_source(p, self.media) for p in parts]
        found = dict(zip(map(id, parts), sources))
        messages = [{"role": m["role"], "content": [
            {"type": "image", "url": found[id(part["image"])]} if part["type"] == "image" else part
            for part in m["content"]]} for m in request.messages]
        return ChatPrompt(messages, {**self.chat_template_kwargs, **request.chat_template_kwargs})

    def generation_config(self, request: ChatRequest) -> tuple[Any, str]:
        """The request's generation config and its decoding settings, made once per set of request options
        (jobs only read their config)."""
        key = request.generation_key()
        cached = self.configs.get(key)
        if cached is None:
            if len(self.configs) >= MAX_CACHED_GENERATION_CONFIGS:
                self.configs.pop(next(iter(self.configs)))
            config = build_generation_config(self.model.generation_config, request, self.limits)
            cached = self.configs[key] = config, decoding_settings(config)
        return cached

    def completion(self, job: GenerationJob, result: Generation, request_id: str) -> dict[str, Any]:
        logprobs = (openai_logprobs(self.tokenizer, result.logprobs, self.token_texts)
                    if result.logprobs is not None else None)
        prompt_tokens = job.inputs["input_ids"].shape[-1]
        return completion_body(request_id, self.served_name, result.text, result.finish_reason,
                               usage(prompt_tokens, len(result.token_ids)), result.stop_string, logprobs)

    @staticmethod
    def attach_stream(job: GenerationJob) -> asyncio.Queue:
        """A queue that gets the job's tokens as ``(token id, TokenLogprob | None)`` as they come, then None."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job.on_token = lambda token, entry: loop.call_soon_threadsafe(queue.put_nowait, (token, entry))
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        return queue

    async def events(self, job: GenerationJob, request: ChatRequest, request_id: str, queue: asyncio.Queue,
                     first: Any) -> AsyncIterator[str]:
        """The stream's server-sent events: a role chunk, content chunks, a last chunk with ``finish_reason`` and
        usage, ``data: [DONE]``. Text that could begin a stop string is held back until it cannot, so the
        stream ends before the stop string, as the whole answer does."""
        created, name = int(time.time()), self.served_name
        delta = TextDelta(self.tokenizer, request.stop, self.channel)
        pending: list[TokenLogprob] = []
        try:
            yield sse(chunk_body(request_id, name, created, {"role": "assistant", "content": ""}))
            item = first
            while item is not None:
                token, entry = item
                if entry is not None:
                    pending.append(entry)
                text = delta.add(token)
                if text or pending:
                    yield sse(chunk_body(request_id, name, created, {"content": text}, logprobs=self.logprobs(pending)))
                    pending = []
                item = await queue.get()
            yield self.last_chunk(job, request_id, created, delta, pending)
            yield "data: [DONE]\n\n"
        finally:
            if not job.future.done():
                job.cancelled = True  # the client has gone: its row stops generating

    def last_chunk(self, job: GenerationJob, request_id: str, created: int, delta: TextDelta,
                   pending: list[TokenLogprob]) -> str:
        error = job.future.exception()
        if error is not None:
            log.error("stream %s failed: %s", request_id, error)
            return sse(error_body(f"generation failed: {type(error).__name__}: {error}", "internal_server_error",
                                  None, 500))
        result = job.future.result()
        rest = delta.rest(result.text)
        return sse(chunk_body(request_id, self.served_name, created, {"content": rest} if rest else {},
                              finish_reason=result.finish_reason, logprobs=self.logprobs(pending),
                              stop_reason=result.stop_string,
                              usage_=usage(job.inputs["input_ids"].shape[-1], len(result.token_ids))))

    def logprobs(self, entries: list[TokenLogprob]) -> list[dict[str, Any]] | None:
        return openai_logprobs(self.tokenizer, entries, self.token_texts) if entries else None


class TextDelta:
    """A stream's text as tokens come: what is new since the last call, never a stop string nor what may begin
    one (the last ``len(longest stop) - 1`` characters wait), nor an incomplete character, nor thinking."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = (), channel: ThinkingChannel | None = None):
        self.tokenizer, self.stop, self.channel = tokenizer, stop, channel
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(answer_ids(self.channel, self.tokens), skip_special_tokens=True)
        end = min([len(text) - self.hold, *(i for i in map(text.find, self.stop) if i >= 0)])
        while end > len(self.sent) and text[end - 1] == "\ufffd":
            end -= 1
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):end], text[:end]
        return new

    def rest(self, final: str) -> str:
        """What of the final text was not sent yet."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""


def build_generation_config(base: Any, request: ChatRequest, limits: Limits) -> Any:
    """The checkpoint's generation config with the request's options (temperature 0: greedy)."""
    config = copy.deepcopy(base)
    if config.max_new_tokens is None or config.max_new_tokens < DEFAULT_MAX_NEW_TOKENS:
        config.max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, limits.max_tokens or DEFAULT_MAX_NEW_TOKENS)
    if request.max_tokens is not None:
        config.max_new_tokens = request.max_tokens
    if request.temperature == 0.0:  # greedy (a temperature set beside it would only draw a warning)
        config.do_sample = False
    elif request.temperature is not None:
        config.temperature = request.temperature
    if request.top_p is not None:
        config.top_p = request.top_p
    if request.frequency_penalty is not None:
        config.repetition_penalty = 1.0 + request.frequency_penalty
    if request.logit_bias:
        config.sequence_bias = {(token,): bias for token, bias in request.logit_bias.items()}
    return config


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})") from None


def as_request_error(error: BaseException) -> BaseException:
    """A prompt the processor could not make is the request's error (HTTP 400); anything else stays as it is."""
    if isinstance(error, PromptError):
        return RequestError(str(error), "messages")
    return error


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def error_response(error: RequestError) -> Any:
    return JSONResponse(error.body(), status_code=error.status)


async def read_body(receive: Callable) -> bytes | None:
    """The request's whole body (None: the client went away first); over MAX_BODY_BYTES is HTTP 413."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        piece = message.get("body", b"")
        size += len(piece)
        if size > MAX_BODY_BYTES:
            raise RequestError(f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", status=413)
        chunks.append(piece)
        more = message.get("more_body", False)
    return b"".join(chunks)


class OpenAIServer:
    """The ASGI app: request ids on every response; chat completions by the short path, the rest by FastAPI."""

    def __init__(self, chat: ChatCompletions, routes: Any):
        self.chat, self.routes, self.manager = chat, routes, chat.manager
        self.run_id = f"{os.getpid():x}{int(time.time()):x}"
        self.ids = itertools.count(1)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.routes(scope, receive, send)
        given = dict(scope.get("headers") or ()).get(X_REQUEST_ID)
        request_id = given.decode("latin-1") if given else f"chatcmpl-{self.run_id}-{next(self.ids)}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (X_REQUEST_ID, request_id.encode("latin-1"))]}
            await send(message)

        if scope.get("method") != "POST" or scope.get("path") != CHAT_PATH:
            return await self.routes(scope, receive, send_with_id)
        response = await self.chat_response(receive, request_id)
        if response is not None:
            await response(scope, receive, send_with_id)

    async def chat_response(self, receive: Callable, request_id: str) -> Any:
        """The response to a chat completion (None: its client left before sending it all). It counts as arriving
        from its first byte: a forming batch waits for it while its body is read and checked."""
        with self.manager.arrival() as arrival:
            try:
                raw = await read_body(receive)
                return None if raw is None else await self.chat.respond(raw, request_id, arrival)
            except RequestError as e:
                return error_response(e)
            except Exception as e:  # noqa: BLE001 - the server's fault: 500, and the server goes on
                log.exception("chat completion %s failed", request_id)
                return JSONResponse(error_body(f"internal error: {type(e).__name__}: {str(e)[:300]}",
                                               "internal_server_error", None, 500), status_code=500)


def routes_app(chat: ChatCompletions, max_batch_size: int) -> Any:
    """The FastAPI app of the routes besides chat completions: /health, /v1/models, /stats."""
    manager, created = chat.manager, int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        manager.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> JSONResponse:
        """200 while requests can be answered; 503 with the reason when generation cannot proceed."""
        problem = manager.problem()
        if problem:
            return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": chat.served_name, "object": "model", "created": created, "owned_by": "gemma-ocr",
             "root": chat.model_dir}]})

    @app.get("/stats")
    def stats() -> JSONResponse:
        """How the server has batched (batches run by size, requests answered), and its torch threads."""
        sizes = manager.batch_sizes
        return JSONResponse({"max_batch_size": max_batch_size, "torch_threads": torch.get_num_threads(),
                             "requests": sum(k * n for k, n in sizes.items()),
                             "batches": {str(k): sizes[k] for k in sorted(sizes)}})

    return app


def build_app(model_dir: str, served_model_name: str, device: str = "auto", dtype: str | None = None,
              max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait: float = DEFAULT_MAX_WAIT,
              media: MediaPolicy | None = None, chat_template_kwargs: dict | None = None) -> OpenAIServer:
    """The embedded server's ASGI app for one local model, answering to ``served_model_name`` (or the folder path):
    the model loaded, the inference thread started (``max_batch_size=1``: one request at a time)."""
    model, processor = load_model(model_dir, device, dtype)
    manager = BatchingGenerateManager(max_batch_size, max_wait)
    chat = ChatCompletions(model, processor, manager, served_model_name, model_dir, media, chat_template_kwargs)
    return OpenAIServer(chat, routes_app(chat, max_batch_size))
