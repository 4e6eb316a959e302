"""Degenerate answers, named instead of scored silently: cut at ``max_tokens``, or caught in a repetition loop.

A model that never ends its turn runs into ``max_tokens`` (the server says ``finish_reason: length``);
one caught in a loop writes the same piece again and again (``Total: 12 12 12 12 12 ...``). Each such
answer gets its own status (``truncated``, ``repetition``), is counted apart, and is still scored.

The rule of a repetition loop (:func:`find_loop`): some piece of the answer, 1 to
:data:`LOOP_MAX_UNIT` characters long, occurs at least :data:`LOOP_MIN_COPIES` times back to back (the
last copy may be cut short), and the copies cover at least :data:`LOOP_MIN_CHARS` characters. A
reference that has such a run itself (a line of dots in a table of contents) makes the answer's run no
loop. An answer with a loop is ``repetition`` whatever its ``finish_reason`` (a loop usually runs into
``max_tokens``); ``truncated`` is an answer cut at ``max_tokens`` without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_ocr.scoring.results import STATUS_EMPTY, STATUS_OK, STATUS_REPETITION, STATUS_TRUNCATED

LOOP_MAX_UNIT = 50
LOOP_MIN_COPIES = 4
LOOP_MIN_CHARS = 20
FINISH_LENGTH = "length"  # the OpenAI API's finish_reason of an answer cut at max_tokens
LOOP_RULE = (f"a piece of 1-{LOOP_MAX_UNIT} characters repeated back to back at least {LOOP_MIN_COPIES} times "
             f"(the last copy may be cut short), the copies covering at least {LOOP_MIN_CHARS} characters, "
             f"unless the reference has such a run too")
STATUS_RULES = {
    STATUS_TRUNCATED: "cut at max_tokens (finish_reason length) without a repetition loop",
    STATUS_REPETITION: f"a repetition loop: {LOOP_RULE}",
}


@dataclass(frozen=True)
class Loop:
    """A run of one repeated piece: where it starts and how many characters it covers."""

    unit: str
    start: int
    length: int

    @property
    def copies(self) -> float:
        return self.length / len(self.unit)


def find_loop(text: str | None) -> Loop | None:
    """The longest run in ``text`` that satisfies the loop rule (ties: the shortest piece), or None."""
    if not text or len(text) < LOOP_MIN_CHARS:
        return None
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    best: Loop | None = None
    for unit in range(1, min(LOOP_MAX_UNIT, len(codes) // LOOP_MIN_COPIES) + 1):
        same = np.concatenate(([False], codes[:-unit] == codes[unit:], [False]))
        edges = np.diff(same.astype(np.int8))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if not len(starts):
            continue
        k = int(np.argmax(ends - starts))
        covered = int(ends[k] - starts[k]) + unit  # matches of text[i] with text[i + unit], plus the first copy
        if covered >= max(LOOP_MIN_CHARS, LOOP_MIN_COPIES * unit) and (best is None or covered > best.length):
            start = int(starts[k])
            best = Loop(text[start:start + unit], start, covered)
    return best


def answer_status(prediction: str | None, finish_reason: str | None, reference: str | None = None) -> str:
    """The status of an answer that came back: ``empty``, ``repetition``, ``truncated`` or ``ok``."""
    if not (prediction or "").strip():
        return STATUS_EMPTY
    if find_loop(prediction) is not None and find_loop(reference) is None:
        return STATUS_REPETITION
    if finish_reason == FINISH_LENGTH:
        return STATUS_TRUNCATED
    return STATUS_OK
