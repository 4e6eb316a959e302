"""Batched generation for the embedded server: requests that arrive together run as one ``generate`` call.

One inference thread (:class:`BatchingGenerateManager`) takes the queued requests whose generation settings
match (up to ``max_batch_size``), prepares their prompts (those a forming batch has taken while it waits for
more, together in one processor call) and runs them as one batch
(:func:`~gemma_ocr.serving.generation.generate_batch`: each request its own answer, ended where it ends).

A forming batch waits, up to ``max_wait`` seconds, for requests still being read and prepared (counted from the
moment they reach the server: :meth:`~BatchingGenerateManager.arrival`), and for as many requests as the previous
batch had (the clients it answered tend to come back together), so that clients that send together
share a batch; a lone client's request does not wait.

Whatever one request does, the others and the thread survive: a prompt that cannot be made (a broken image)
fails its own request only (:class:`~gemma_ocr.serving.generation.PromptError`), a failed job is never prepared
again, and the thread outlives any exception (:meth:`BatchingGenerateManager.problem` says when generation
cannot proceed).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import torch

from gemma_ocr.serving.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT
from gemma_ocr.serving.generation import (
    Generation,
    GenerationJob,
    PromptError,
    batch_key,
    generate_batch,
    prepare_prompts,
)

log = logging.getLogger(__name__)

FAILURES_UNHEALTHY = 3  # batches failing in a row (none answered between) after which generation counts as broken


class Arrival:
    """A request on its way to :meth:`BatchingGenerateManager.submit` (see :meth:`~BatchingGenerateManager.arrival`)."""

    def __init__(self, manager: BatchingGenerateManager):
        self._manager: BatchingGenerateManager | None = manager
        manager._count_arrival(+1)

    def done(self) -> None:
        """No longer on its way (idempotent)."""
        if self._manager is not None:
            self._manager._count_arrival(-1)
            self._manager = None

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done()


#: The arrival of the request being handled, set by the server when the request comes in.
current_arrival: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar("current_arrival", default=None)


class BatchingGenerateManager:
    """The inference thread: queued jobs generated in batches, each job's future answered."""

    def __init__(self, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait: float = DEFAULT_MAX_WAIT):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size, self.max_wait = max_batch_size, max_wait
        self._jobs: deque[GenerationJob] = deque()
        self._cond = threading.Condition()
        self._preparing = 0
        self._last_batch = 1  # the clients a batch answers tend to come back together: the next one waits for as many
        self._closed = False
        self.failures_in_a_row = 0  # batches whose generate failed since the last one that answered
        self.last_failure: str | None = None
        self.batch_sizes: Counter[int] = Counter()  # batches run so far, by size (the server's /stats)
        self._thread = threading.Thread(target=self._work, name="batched-generate", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ what the server calls

    def arrival(self) -> Arrival:
        """Count a request that has reached the server and will be submitted: a forming batch waits for it
        until :meth:`Arrival.done` (called once it is submitted, or has failed)."""
        return Arrival(self)

    def _count_arrival(self, change: int) -> None:
        with self._cond:
            self._preparing += change
            self._cond.notify_all()

    def submit(self, job: GenerationJob) -> Future:
        """Queue ``job``; its future gets the :class:`Generation` (or the exception generation raised)."""
        with self._cond:
            if self._closed or not self._thread.is_alive():
                raise RuntimeError(self.problem() or "the generation manager has stopped")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future

    async def generate(self, job: GenerationJob) -> Generation:
        return await asyncio.wrap_future(self.submit(job))

    def problem(self) -> str | None:
        """Why generation cannot proceed now (the server's /health answers 503 with it), or None."""
        if self._closed:
            return "the inference thread has been stopped"
        if not self._thread.is_alive():
            return "the inference thread has died"
        if self.failures_in_a_row >= FAILURES_UNHEALTHY:
            return f"the last {self.failures_in_a_row} batches failed in generate ({self.last_failure})"
        return None

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------ the inference thread

    def _take(self) -> list[GenerationJob] | None:
        """The next batch, once there is one; None when stopped."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._jobs.popleft()
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            expected = min(self._last_batch, self.max_batch_size)
            group = first.key[:2]  # the model and decoding settings, prompts prepared or not
            while len(batch) < self.max_batch_size:
                match = next((j for j in self._jobs if j.key[:2] == group), None)
                if match is not None:
                    self._jobs.remove(match)
                    batch.append(match)
                    continue
                remaining = deadline - time.monotonic()
                coming = self._preparing > 0 or len(batch) < expected
                if not coming or remaining <= 0 or self._closed:
                    break
                unprepared = _unprepared(batch)
                if unprepared:  # while the others are on their way: off the path from the last arrival to generate
                    self._cond.release()
                    try:
                        self._prepare(unprepared)
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(remaining)
            self._last_batch = len(batch)
            return batch

    def _work(self) -> None:
        """The thread's loop: it ends only when stopped; an error fails the jobs it concerns, never the thread."""
        while True:
            taken: list[GenerationJob] = []
            try:
                taken = self._take() or []
                if not taken and self._closed:
                    return
                self._prepare(_unprepared(taken))
                groups: dict[tuple, list[GenerationJob]] = {}
                for job in taken:
                    if not job.future.done():
                        groups.setdefault(job.key, []).append(job)
                for group in groups.values():
                    self._run(group)
            except Exception as e:  # noqa: BLE001 - a bug here must not stop every later request
                log.exception("the inference thread failed on a batch of %d; it goes on", len(taken))
                for job in taken:
                    job.settle(error=e)

    def _prepare(self, jobs: list[GenerationJob]) -> None:
        """Make the prompt tensors of ``jobs``, several at once where they can be; a prompt that fails (a broken
        image) fails its own request only, with a :class:`PromptError`."""
        by_processor: dict[int, list[GenerationJob]] = {}
        for job in jobs:
            by_processor.setdefault(id(job.processor), []).append(job)
        for group in by_processor.values():
            try:
                prepared = prepare_prompts(group[0].processor, [j.prompt for j in group])
            except Exception:  # noqa: BLE001
                prepared = None  # find the request that failed
            for i, job in enumerate(group):
                try:
                    job.inputs = prepared[i] if prepared is not None else prepare_prompts(job.processor, [job.prompt])[0]
                except Exception as e:  # noqa: BLE001 - whatever the processor raised on this request's chat
                    job.settle(error=PromptError(f"the prompt could not be made from the request's messages: "
                                                 f"{type(e).__name__}: {str(e)[:300]}"))
                    continue
                job.key = batch_key(job)

    def _run(self, taken: list[GenerationJob]) -> None:
        """Generate one batch of prepared jobs and hand each its answer (or the batch's error)."""
        self.batch_sizes[len(taken)] += 1
        t = time.perf_counter()
        try:
            seeds = [j.seed for j in taken if j.seed is not None]
            if seeds:
                torch.manual_seed(seeds[0])
            results = generate_batch(taken)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error (HTTP 500)
            log.exception("generation failed for a batch of %d", len(taken))
            self.failures_in_a_row += 1
            self.last_failure = f"{type(e).__name__}: {str(e)[:200]}"
            for job in taken:
                job.settle(error=e)
            return
        self.failures_in_a_row = 0
        log.debug("batch of %d in %.3fs", len(taken), time.perf_counter() - t)
        for job, result in zip(taken, results):
            job.settle(result)


def _unprepared(jobs: Sequence[GenerationJob]) -> list[GenerationJob]:
    """The jobs still to be prepared: without inputs, with a prompt, and not failed already."""
    return [j for j in jobs if j.inputs is None and j.prompt is not None and not j.future.done()]
