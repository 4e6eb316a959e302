"""The chat-completions request of the OpenAI API, checked in one place, and the layout of the answers.

:func:`parse_chat_request` turns a request body into a :class:`ChatRequest` or raises :class:`RequestError`
(HTTP 400 with the OpenAI error body, naming the field: ``{"error": {"message", "type", "param", "code"}}``).
Fields the embedded server cannot honour are refused rather than ignored (``n`` other than 1, tools, a
response format); fields that change nothing here (``user``, ``metadata``, ``store``...) are accepted.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_STOP_STRINGS = 4  # the OpenAI API's limit
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # the OpenAI API's range: -100 to 100
ROLES = ("system", "user", "assistant")
# Accepted and without effect here.
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "stream_options", "parallel_tool_calls",
                            "safety_identifier", "prompt_cache_key"})
# Refused unless absent, null or the value that changes nothing: what they would ask is not done here.
UNSUPPORTED_FIELDS = {"tools": None, "tool_choice": "none", "functions": None, "function_call": "none",
                      "response_format": {"type": "text"}, "audio": None, "modalities": ["text"], "prediction": None,
                      "web_search_options": None, "reasoning_effort": None, "presence_penalty": 0}
HANDLED_FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                            "frequency_penalty", "logit_bias", "seed", "stop", "logprobs", "top_logprobs", "stream",
                            "chat_template_kwargs", "n"})


class RequestError(Exception):
    """A client's error: HTTP ``status`` with the OpenAI error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 error_type: str = "invalid_request_error", code: str | int | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.error_type = message, param, status, error_type
        self.code = code if code is not None else status

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | int | None = None) -> dict:
    """The OpenAI API's error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What the served model allows a request to ask for."""

    max_tokens: int | None = None  # the model's context length
    vocab_size: int | None = None  # token ids of ``logit_bias`` are below it


@dataclass(frozen=True)
class ImagePart:
    """An ``image_url`` content part: its URL and where it is in the request (for errors)."""

    url: str
    param: str


@dataclass
class ChatRequest:
    """A checked chat-completions request. ``messages`` keep the OpenAI layout, their parts checked; images
    are :class:`ImagePart` s until the server reads them."""

    model: str | None
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the k most likely
    stream: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    def generation_key(self) -> tuple:
        """The options a generation config is made from (requests with equal keys share one)."""
        bias = tuple(sorted(self.logit_bias.items())) if self.logit_bias else None
        return (self.max_tokens, self.temperature, self.top_p, self.frequency_penalty, bias)

    def images(self) -> list[ImagePart]:
        return [part["image"] for m in self.messages for part in m["content"] if part["type"] == "image"]


def parse_chat_request(body: Any, limits: Limits = Limits()) -> ChatRequest:
    """``body`` (the decoded JSON) as a :class:`ChatRequest`; a :class:`RequestError` naming the first bad field."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_kind(body)}")
    check_fields(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"`model` must be a string, got {_kind(model)}", "model")
    n = body.get("n")
    if n is not None and (not _whole(n) or n != 1):
        raise RequestError(f"`n` must be 1 (the embedded server gives one choice per request), got {n!r}", "n")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise RequestError(f"`stream` must be true or false, got {stream!r}", "stream")
    return ChatRequest(
        model=model,
        messages=parse_messages(body.get("messages")),
        max_tokens=max_tokens(body, limits),
        temperature=number(body, "temperature", low=0.0),
        top_p=number(body, "top_p", low=0.0, high=1.0, low_open=True),
        # as transformers' repetition_penalty 1 + frequency_penalty, which must be positive
        frequency_penalty=number(body, "frequency_penalty", low=-1.0, high=2.0, low_open=True),
        logit_bias=logit_bias(body.get("logit_bias"), limits.vocab_size),
        seed=seed(body.get("seed")),
        stop=stop_strings(body.get("stop")),
        top_logprobs=logprobs_option(body.get("logprobs"), body.get("top_logprobs")),
        stream=bool(stream),
        chat_template_kwargs=template_kwargs(body.get("chat_template_kwargs")),
    )


def check_fields(body: Mapping[str, Any]) -> None:
    """Refuse unknown fields, and supported-elsewhere ones that would ask for something not done here."""
    for name, value in body.items():
        if name in HANDLED_FIELDS or name in IGNORED_FIELDS:
            continue
        if name in UNSUPPORTED_FIELDS:
            if value is None or value == UNSUPPORTED_FIELDS[name] or value == []:
                continue
            raise RequestError(f"`{name}` is not supported by the embedded server (serve with --engine vllm for it)",
                               name)
        raise RequestError(f"unknown field `{name}` in the request", name)


def parse_messages(messages: Any) -> list[dict[str, Any]]:
    """The chat, checked: a non-empty list of ``{"role", "content"}`` whose content is a string or a list of
    ``text`` and ``image_url`` parts. Returned as the processor takes it (parts as dicts, images as ImagePart)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list of messages", "messages")
    return [parse_message(m, f"messages[{i}]") for i, m in enumerate(messages)]


def parse_message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RequestError(f"`{where}` must be an object with `role` and `content`, got {_kind(message)}", where)
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"`{where}.role` must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return {"role": role, "content": [{"type": "text", "text": content}]}
    if not isinstance(content, list):
        raise RequestError(f"`{where}.content` must be a string or a list of content parts, got {_kind(content)}",
                           f"{where}.content")
    return {"role": role, "content": [parse_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]}


def parse_part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RequestError(f"`{where}.text` must be a string", f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise RequestError(f"`{where}.image_url.url` must be a non-empty string", f"{where}.image_url.url")
        return {"type": "image", "image": ImagePart(url, f"{where}.image_url.url")}
    if not isinstance(part, dict):
        raise RequestError(f"`{where}` must be a content part object, got {_kind(part)}", where)
    raise RequestError(f"`{where}.type` {kind!r} is not supported: use `text` or `image_url`", f"{where}.type")


def max_tokens(body: Mapping[str, Any], limits: Limits) -> int | None:
    """``max_completion_tokens`` (or the older ``max_tokens``): a whole number from 1 to the context length."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return None
    if not _whole(value) or value < 1:
        raise RequestError(f"`{name}` must be a whole number >= 1, got {value!r}", name)
    if limits.max_tokens is not None and value > limits.max_tokens:
        raise RequestError(f"`{name}` {value} is more than the model's context length ({limits.max_tokens} tokens)",
                           name)
    return value


def number(body: Mapping[str, Any], name: str, low: float, high: float | None = None,
           low_open: bool = False) -> float | None:
    """A finite number in [low, high] (``low_open``: above low), or None when absent."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'above' if low_open else 'at least'} {low:g}" + (f" and at most {high:g}" if high is not None else "")
        raise RequestError(f"`{name}` must be a number {bounds}, got {value!r}", name)
    return float(value)


def seed(value: Any) -> int | None:
    if value is None:
        return None
    if not _whole(value) or not -(2**63) <= value < 2**64:
        raise RequestError(f"`seed` must be a whole number, got {value!r}", "seed")
    return value % 2**63


def stop_strings(value: Any) -> tuple[str, ...]:
    """A request's ``stop`` (a string, a list of up to 4, or null) as a tuple."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or len(values) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in values)):
        raise RequestError(f"`stop` must be a non-empty string or a list of up to {MAX_STOP_STRINGS} of them, "
                           f"got {value!r}", "stop")
    return tuple(values)


def logit_bias(value: Any, vocab_size: int | None = None) -> dict[int, float] | None:
    """A request's ``logit_bias`` ({token id: bias from -100 to 100}) with int keys and float biases."""
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise TypeError
        bias = {int(k): float(v) for k, v in value.items() if not isinstance(v, bool)}
        if len(bias) != len(value) or not all(math.isfinite(v) for v in bias.values()):
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(f"`logit_bias` must map token ids to numbers, got {value!r}", "logit_bias") from None
    bad = [t for t in bias if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        raise RequestError(f"`logit_bias`: token id {bad[0]} is not in the vocabulary (0-{(vocab_size or 1) - 1})",
                           "logit_bias")
    if any(abs(v) > MAX_LOGIT_BIAS for v in bias.values()):
        raise RequestError(f"`logit_bias` values must be from -{MAX_LOGIT_BIAS:g} to {MAX_LOGIT_BIAS:g}", "logit_bias")
    return bias


def logprobs_option(logprobs: Any, top_logprobs: Any) -> int | None:
    """``logprobs``/``top_logprobs`` of a request: None (no log-probabilities) or how many alternatives to list."""
    if logprobs not in (None, True, False):
        raise RequestError(f"`logprobs` must be true or false, got {logprobs!r}", "logprobs")
    if top_logprobs is not None:
        if not _whole(top_logprobs) or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(f"`top_logprobs` must be a whole number from 0 to {MAX_TOP_LOGPROBS}, "
                               f"got {top_logprobs!r}", "top_logprobs")
        if not logprobs:
            raise RequestError("`top_logprobs` needs `logprobs: true`", "top_logprobs")
    return (top_logprobs or 0) if logprobs else None


def template_kwargs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"`chat_template_kwargs` must be an object, got {_kind(value)}", "chat_template_kwargs")
    return dict(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# ---------------------------------------------------------------- answers


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, model: str, text: str, finish_reason: str, usage_: dict[str, int],
                    stop_reason: str | None = None, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` with one choice (``stop_reason``: the stop string that ended it, as vLLM names it)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": finish_reason}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage_}


def chunk_body(request_id: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
               logprobs: list[dict[str, Any]] | None = None, stop_reason: str | None = None,
               usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` of a stream."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [choice]}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def openai_logprobs(tokenizer: Any, logprobs: Sequence[Any], texts: dict[int, str] | None = None) -> list[dict]:
    """``choices[0].logprobs.content`` in the OpenAI layout from :class:`gemma_ocr.serving.generation.TokenLogprob` s
    (``texts``: a cache of token texts by id)."""
    texts = {} if texts is None else texts

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = texts.get(token_id)
        if text is None:
            text = texts[token_id] = tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in logprobs]
