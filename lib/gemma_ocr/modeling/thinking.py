"""Thinking kept out of OCR answers, for every family whose registry entry has a thinking channel (Gemma 4).

An OCR prompt never turns thinking on: :func:`thinking_off` is the chat template keyword that says so
(``enable_thinking=False``), given explicitly wherever the template is applied. Should a model think anyway,
its thinking comes between the family's channel tokens (``<|channel>thought\\n...<channel|>``); those are
special tokens, so decoding with ``skip_special_tokens=True`` would leave ``thought\\n...`` glued to the answer.
:class:`ThinkingChannel` drops the channel from generated token ids before they are decoded: the one place
that does it for the embedded server, its streams, and any other code that generates answers (the CER
evaluation of training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemma_ocr.modeling.families import ModelFamily


def thinking_off(family: ModelFamily | None) -> dict[str, bool]:
    """The chat template keyword that keeps the family's thinking off (empty for a family without thinking)."""
    return {family.thinking_switch: False} if family is not None and family.thinking_switch else {}


@dataclass(frozen=True)
class ThinkingChannel:
    """The token ids that open and close a family's thinking channel."""

    open_id: int
    close_id: int

    @classmethod
    def of(cls, family: ModelFamily | None, tokenizer: Any) -> ThinkingChannel | None:
        """The channel of ``family`` in ``tokenizer`` (None: the family has none, or the tokenizer lacks it)."""
        if family is None or family.thinking_channel is None:
            return None
        ids = [tokenizer.convert_tokens_to_ids(token) for token in family.thinking_channel]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            return None
        return cls(*ids)

    def answer_ids(self, token_ids: Sequence[int]) -> list[int]:
        """``token_ids`` without any thinking channel, its tokens included; a channel not closed yet (a stream,
        or an answer cut at its limit) runs to the end."""
        if self.open_id not in token_ids:
            return list(token_ids)
        kept, inside = [], False
        for token in token_ids:
            if token == self.open_id:
                inside = True
            elif token == self.close_id and inside:
                inside = False
            elif not inside:
                kept.append(token)
        return kept


def answer_ids(channel: ThinkingChannel | None, token_ids: Sequence[int]) -> Sequence[int]:
    """``token_ids`` without thinking (``token_ids`` itself when there is no channel)."""
    return token_ids if channel is None else channel.answer_ids(token_ids)
