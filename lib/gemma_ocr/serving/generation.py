"""The batched generate step of the embedded server: jobs that share a batch run as one ``generate`` call.

:func:`generate_batch` left-pads the prompts of jobs with equal :func:`batch_key` and runs them as one
``model.generate``, giving each request its own answer, ended where that request ends (the prompts are made from
the chats by :func:`prepare_prompts`, those of one batch together in one processor call):

* at an end-of-turn/EOS token (``finish_reason`` ``stop``), at the request's own ``max_tokens``
  (``length``), or at one of its ``stop`` strings (``stop``; the text ends before the stop string,
  as the OpenAI API and vLLM have it);
* with the log-probability of each generated token, and of the ``top_logprobs`` most likely ones,
  when the request asks for ``logprobs``: the log-softmax of the scores the token was chosen from
  (at temperature 0 without penalties: the model's own logits, what vLLM returns), the final
  end-of-turn token included, as vLLM does;
* with its text free of thinking: a family's thinking channel (Gemma 4's ``<|channel>...<channel|>``) is
  dropped from the tokens before they are decoded (:mod:`gemma_ocr.modeling.thinking`).

Padding is masked out, so a greedy answer is the one the request gets alone. A streaming request is a job like
the others: its tokens also go, as they come, to its ``on_token``. A prompt that cannot be made (a broken image)
is its own request's :class:`PromptError`. Which jobs run together, and when, is
:mod:`gemma_ocr.serving.batching`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from gemma_ocr.modeling.families import FAMILIES, family_of_model
from gemma_ocr.modeling.thinking import ThinkingChannel, answer_ids

log = logging.getLogger(__name__)

# Per-token inputs, left-padded to the longest prompt of a batch (the value padding takes): every family's.
_PADDED_INPUTS = {"input_ids": None, "attention_mask": 0, **{k: 0 for f in FAMILIES for k in f.token_keys}}
# Per-image inputs, concatenated on dim 0 (each image's rows; Gemma 4 pads every image to the budget's patches).
_IMAGE_INPUTS = ("pixel_values", *(k for f in FAMILIES for k in f.image_keys))
_UNBATCHED_SETTINGS = ("max_new_tokens", "max_length", "stop_strings")  # settled per request


class PromptError(ValueError):
    """A request's prompt could not be made from what it sent (an image that does not decode, a chat the
    template refuses): that request's own error (HTTP 400), no other's."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives at its step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Generation:
    """One request's answer."""

    token_ids: list[int]  # generated tokens, the final EOS/end-of-turn included (as ``generate`` returns them)
    text: str  # decoded without special tokens nor thinking, cut before a stop string
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_new_tokens reached)
    stop_string: str | None = None  # the stop string that ended it
    logprobs: list[TokenLogprob] | None = None  # None: not asked for


@dataclass(frozen=True)
class ChatPrompt:
    """A chat to turn into prompt tensors: the processor's messages and the chat template's options."""

    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)  # apply_chat_template keywords (tools, template kwargs)

    def group(self) -> str:
        """Prompts of equal groups are prepared in one processor call."""
        return json.dumps(self.options, sort_keys=True, default=str)


def as_tensors(arrays: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The processor's NumPy outputs as torch tensors (sharing their memory; other values as they are)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def prepare_prompts(processor: Any, prompts: Sequence[ChatPrompt]) -> list[dict[str, torch.Tensor]]:
    """Each chat's prompt tensors ([1, L] tokens, its image's pixel values), as the processor makes them for that
    chat alone; chats of one image each (and one group) go through the processor in one call, which costs a
    third less per chat than one call each. The processor makes NumPy arrays, made tensors after: it counts
    each prompt's image tokens element by element, which over torch tensors was a quarter of its time."""
    def alone(prompt: ChatPrompt) -> dict[str, torch.Tensor]:
        return as_tensors(processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True, return_tensors="np", **prompt.options))

    images = [sum(isinstance(part, dict) and part.get("type") == "image" for m in p.messages
                  for part in (m.get("content") if isinstance(m.get("content"), list) else ())) for p in prompts]
    if len(prompts) == 1 or any(n != 1 for n in images) or len({p.group() for p in prompts}) > 1:
        return [alone(p) for p in prompts]
    batch = processor.apply_chat_template([p.messages for p in prompts], add_generation_prompt=True, tokenize=True,
                                          return_dict=True, return_tensors="np",
                                          processor_kwargs={"padding": True, "padding_side": "left"},
                                          **prompts[0].options)
    batch = as_tensors(batch)
    if set(batch) - set(_PADDED_INPUTS) - set(_IMAGE_INPUTS) or \
            any(batch[k].shape[0] != len(prompts) for k in _IMAGE_INPUTS if k in batch):
        return [alone(p) for p in prompts]  # a layout this split does not know
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [{name: value[row:row + 1, -n:] if name in _PADDED_INPUTS else value[row:row + 1]
             for name, value in batch.items()} for row, n in enumerate(lengths)]


@dataclass
class GenerationJob:
    """A request waiting for the inference thread."""

    model: Any
    processor: Any
    inputs: dict[str, torch.Tensor] | None  # one prompt: [1, L] token tensors, pixel values (None: from ``prompt``)
    config: GenerationConfig
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's only; k: and the k most likely
    future: Future = field(default_factory=Future)
    key: tuple = ()
    # Made into ``inputs`` on the inference thread (image decoding, chat template), between batches: threads
    # that prepared prompts while a batch ran took the GIL from it and from each other at every torch call.
    prompt: ChatPrompt | None = None
    settings: str = ""  # the decoding settings a batch shares, as JSON (made from ``config`` once)
    seed: int | None = None  # torch is seeded with it before the batch runs (sampling only)
    # Called on the inference thread with each generated token (and its log-probabilities when asked): streaming.
    on_token: Callable[[int, TokenLogprob | None], None] | None = None
    cancelled: bool = False  # set when its client has gone: the batch stops generating for it

    def __post_init__(self) -> None:
        self.settings = self.settings or decoding_settings(self.config)
        self.key = batch_key(self)

    def settle(self, result: Generation | None = None, error: BaseException | None = None) -> None:
        """Give the job its answer or its error, unless it has one already (a failed job is never answered twice)."""
        if self.future.done():
            return
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except InvalidStateError:  # cancelled meanwhile
            pass


def decoding_settings(config: GenerationConfig) -> str:
    """The settings of ``config`` that jobs of one batch share (all but the per-request limits), as JSON."""
    settings = {k: _keyed(v) for k, v in config.to_dict().items() if k not in _UNBATCHED_SETTINGS}
    return json.dumps(settings, sort_keys=True, default=str)


def batch_key(job: GenerationJob) -> tuple:
    """Jobs with equal keys can share a batch: the same model, decoding settings and input layout."""
    if job.inputs is None:  # grouped again once prepared
        return (id(job.model), job.settings, "to prepare")
    layout = tuple(sorted((name, str(value.dtype), None if name in _PADDED_INPUTS else tuple(value.shape[1:]))
                          for name, value in job.inputs.items() if isinstance(value, torch.Tensor)))
    untensored = any(not isinstance(v, torch.Tensor) for v in job.inputs.values())
    return (id(job.model), job.settings, layout, untensored and id(job))


def _keyed(value: Any) -> Any:
    """``value`` with every mapping's keys made strings (sequence_bias is keyed by token tuples)."""
    if isinstance(value, dict):
        return {str(k): _keyed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_keyed(v) for v in value]
    return value


def collate(inputs: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of single-prompt inputs: token tensors left-padded to the longest, the others concatenated."""
    if len(inputs) == 1:  # exactly what one-at-a-time generation gets
        return dict(inputs[0])
    longest = max(x["input_ids"].shape[-1] for x in inputs)
    batch: dict[str, torch.Tensor] = {}
    for name in inputs[0]:
        values = [x[name] for x in inputs]
        if name in _PADDED_INPUTS:
            fill = pad_token_id if name == "input_ids" else _PADDED_INPUTS[name]
            values = [torch.nn.functional.pad(v, (longest - v.shape[-1], 0), value=fill) for v in values]
        batch[name] = torch.cat(values)
    if "attention_mask" not in batch:
        lengths = [x["input_ids"].shape[-1] for x in inputs]
        batch["attention_mask"] = torch.stack([torch.arange(longest) >= longest - n for n in lengths]).long()
    return batch


def eos_token_ids(config: GenerationConfig) -> set[int]:
    eos = config.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class _Rows:
    """Per-request bookkeeping of one batch: tokens, log-probabilities, where each request ends."""

    def __init__(self, jobs: Sequence[GenerationJob], tokenizer: Any, channel: ThinkingChannel | None = None):
        self.jobs = list(jobs)
        self.tokenizer = tokenizer
        self.channel = channel  # thinking, dropped from the text before it is decoded
        self.eos = [eos_token_ids(j.config) for j in jobs]
        self.limits = [j.config.max_new_tokens for j in jobs]
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.logprobs: list[list[TokenLogprob] | None] = [[] if j.top_logprobs is not None else None for j in jobs]
        self.finish: list[str | None] = [None] * len(jobs)
        self.stop_string: list[str | None] = [None] * len(jobs)
        self.top_k = max((j.top_logprobs or 0 for j in jobs), default=0)
        self.wants_logprobs = any(j.top_logprobs is not None for j in jobs)
        self.step_logprobs: torch.Tensor | None = None  # [batch, vocab] of the step whose token comes next
        # A stop string spans at most 4 tokens per character (byte-fallback tokens) plus special tokens.
        self.stop_window = [4 * max((len(s) for s in j.stop), default=0) + 8 for j in jobs]

    def record_scores(self, scores: torch.Tensor) -> None:
        if self.wants_logprobs:
            self.step_logprobs = torch.log_softmax(scores.float(), dim=-1)

    def add_step(self, tokens: torch.Tensor) -> None:
        """Take each unfinished request's new token (``tokens``: one per row) with its log-probabilities."""
        chosen = top_ids = top_values = None
        if self.step_logprobs is not None:  # one gather and one top-k for the whole batch
            chosen = self.step_logprobs.gather(1, tokens[:, None].to(self.step_logprobs.device))[:, 0].tolist()
            if self.top_k:
                values, ids = torch.topk(self.step_logprobs, min(self.top_k, self.step_logprobs.shape[-1]))
                top_ids, top_values = ids.tolist(), values.tolist()
        for row, token in enumerate(tokens.tolist()):
            if self.finish[row] is not None:
                continue
            job = self.jobs[row]
            if job.cancelled:  # its client has gone
                self.finish[row] = "cancelled"
                continue
            entry = None
            if self.logprobs[row] is not None and chosen is not None:
                k = job.top_logprobs or 0
                top = tuple(zip(top_ids[row][:k], top_values[row][:k])) if k and top_ids is not None else ()
                entry = TokenLogprob(token, chosen[row], top)
                self.logprobs[row].append(entry)
            self.add(row, token)
            if job.on_token is not None:
                self._tell(job, token, entry)

    @staticmethod
    def _tell(job: GenerationJob, token: int, entry: TokenLogprob | None) -> None:
        """Hand a streaming job its token; a stream that cannot take it (its loop gone) is cancelled."""
        try:
            job.on_token(token, entry)
        except Exception:  # noqa: BLE001 - the stream's problem, never the batch's
            log.warning("a stream could not take its token: generation for it stops", exc_info=True)
            job.cancelled = True

    def add(self, row: int, token: int) -> None:
        """Take ``token`` as request ``row``'s next one and decide whether it has ended."""
        tokens = self.tokens[row]
        tokens.append(token)
        if token in self.eos[row]:
            self.finish[row] = "stop"
        elif self.jobs[row].stop and self._stop_string(row):
            self.finish[row] = "stop"
        elif self.limits[row] is not None and len(tokens) >= self.limits[row]:
            self.finish[row] = "length"

    def _stop_string(self, row: int) -> bool:
        tail = self.tokenizer.decode(answer_ids(self.channel, self.tokens[row])[-self.stop_window[row]:],
                                     skip_special_tokens=True)
        found = [s for s in self.jobs[row].stop if s in tail]
        if found:
            self.stop_string[row] = found[0]
        return bool(found)

    def result(self, row: int) -> Generation:
        tokens = self.tokens[row]
        text = self.tokenizer.decode(answer_ids(self.channel, tokens), skip_special_tokens=True)
        if self.stop_string[row] is not None:
            cuts = [text.find(s) for s in self.jobs[row].stop if s in text]
            text = text[: min(cuts)] if cuts else text
        return Generation(tokens, text, self.finish[row] or "length", self.stop_string[row], self.logprobs[row])


class _RecordScores(LogitsProcessor):
    """Keeps each step's log-probabilities for :class:`_EndPerRow` (the scores pass unchanged)."""

    def __init__(self, rows: _Rows):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.rows.record_scores(scores)
        return scores


class _EndPerRow(StoppingCriteria):
    """Records each request's new token and ends the requests that are done (EOS, stop string, own limit)."""

    def __init__(self, rows: _Rows):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        rows = self.rows
        rows.add_step(input_ids[:, -1])
        return torch.tensor([f is not None for f in rows.finish], dtype=torch.bool, device=input_ids.device)


def tokenizer_of(processor: Any) -> Any:
    """The text tokenizer of a processor (a tokenizer is its own)."""
    return getattr(processor, "tokenizer", processor)


def generate_batch(jobs: Sequence[GenerationJob]) -> list[Generation]:
    """Run ``jobs`` (equal :func:`batch_key`) as one ``generate`` call; their answers in order."""
    model, processor = jobs[0].model, jobs[0].processor
    tokenizer = tokenizer_of(processor)
    config = GenerationConfig.from_dict(jobs[0].config.to_dict())
    config.max_new_tokens = max(j.config.max_new_tokens or 20 for j in jobs)
    config.stop_strings = None
    pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        pad = next(iter(eos_token_ids(config)), 0)
        config.pad_token_id = pad
    inputs = collate([j.inputs for j in jobs], int(pad))
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    rows = _Rows(jobs, tokenizer, ThinkingChannel.of(family_of_model(model.config), tokenizer))
    kwargs: dict[str, Any] = {}
    if hasattr(model, "has_talker"):
        kwargs["generation_mode"] = "text"
    with torch.inference_mode():
        model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([_RecordScores(rows)]),
                       stopping_criteria=StoppingCriteriaList([_EndPerRow(rows)]), **kwargs)
    return [rows.result(i) for i in range(len(jobs))]
