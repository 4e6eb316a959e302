"""Dead workers: the running trial of a worker that died is failed within a grace period and retried.

On the RDB storages (SQLite, PostgreSQL, MySQL) this is Optuna's own machinery: ``RDBStorage``
with ``heartbeat_interval``/``grace_period``, heartbeats recorded by ``study.optimize`` while a
trial runs, stale trials failed before each new trial by ``optuna.storages.fail_stale_trials``,
and ``RetryHeartbeatStaleTrialCallback`` (``RetryFailedTrialCallback`` before Optuna 4.9) queueing a failed
trial's parameters again.

Optuna's ``JournalStorage`` has no heartbeats (Optuna 5.0), so for journal files this module keeps
the same promise itself, and only that: the running trial's worker writes a ``heartbeat`` user
attribute every interval (:meth:`Liveness.beating`), and a trial whose last heartbeat (or start) is
older than the grace period is told FAIL and handed to the same retry callback
(:meth:`Liveness.fail_stale`). Journal workers on several machines compare wall clocks: keep them
in sync (NTP), as usual for a shared file system.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from gemma_ocr.search.export import now, write_trial_results
from gemma_ocr.search.storage import STORAGE_ERRORS, first_line, study_lock

log = logging.getLogger(__name__)

#: How often a dead worker's trial is run again before it stays failed (a trial that kills its
#: worker every time, e.g. through the kernel's out-of-memory killer, must not take every worker down).
MAX_RETRIES = 2
HEARTBEAT_ATTR = "heartbeat"
RESULTS_ATTR = "results_file"  # where the trial's results file is, for whoever finds its worker dead
# Telling a trial that another process has finished meanwhile: study.tell raises ValueError; the storage raises
# UpdateFinishedTrialError (a RuntimeError) since Optuna 4.3, a plain RuntimeError before.
TRIAL_ALREADY_FINISHED: tuple[type[Exception], ...] = (
    ValueError, getattr(optuna.exceptions, "UpdateFinishedTrialError", RuntimeError))


#: Optuna's retry callback: RetryHeartbeatStaleTrialCallback since Optuna 4.9 (the old name is deprecated there and
#: goes in 6.0); RetryFailedTrialCallback before.
RETRY = (optuna.storages.RetryHeartbeatStaleTrialCallback if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
         else optuna.storages.RetryFailedTrialCallback)


def retry_of(trial: FrozenTrial) -> int | None:
    """The trial that ``trial`` runs again (None when it is no retry).

    The system attribute the retry callback writes; its accessor ``RETRY.retry_history`` reads the same
    and warns on each call that it is experimental.
    """
    history = trial.system_attrs.get("retry_history") or []
    return history[-1] if history else None


def retried(trials: list[FrozenTrial]) -> dict[int, int]:
    """Failed trial number -> the number of the trial that runs it again."""
    return {n: t.number for t in trials if (n := retry_of(t)) is not None}


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count towards a study-wide cap: a dead worker's trial counts once, through its retry."""
    return len(trials) - len(retried(trials))


def running_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Running trials of this search's workers (a worker may still die and leave its trial to retry)."""
    return [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]


class StaleTrials:
    """What happens to a dead worker's trial once it is failed: queued again, its results file updated."""

    def __init__(self, grace: int) -> None:
        self.grace = grace
        with warnings.catch_warnings():  # built once, before any worker thread starts
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RETRY(max_retry=MAX_RETRIES)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)
        again = [n for n in [retried(study.get_trials(deepcopy=False)).get(trial.number)] if n is not None]
        worker = trial.user_attrs.get("worker", "?")
        reason = f"its worker {worker} stopped (no heartbeat for over {self.grace} s)"
        retry = f"queued again as trial {again[0]}" if again else f"not retried (it already ran {MAX_RETRIES + 1} times)"
        log.warning("trial %d failed: %s; %s", trial.number, reason, retry)
        self._record(trial, f"{reason}; {retry}", again[0] if again else None)

    @staticmethod
    def _record(trial: FrozenTrial, error: str, retried_as: int | None) -> None:
        """Say in the trial's results file what happened (when this machine can see it)."""
        path = Path(trial.user_attrs.get(RESULTS_ATTR) or "")
        try:
            doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError) as e:
            log.warning("%s: not updated (%s)", path, e)
            return
        if not isinstance(doc, dict) or doc.get("trial_number") != trial.number:
            return
        doc.update(state=TrialState.FAIL.name, error=error, retried_as=retried_as, finished=now())
        write_trial_results(path, doc)


@contextlib.contextmanager
def every(interval: float, action: Callable[[], None], name: str, at_once: bool = False) -> Iterator[None]:
    """While the block runs, call ``action`` every ``interval`` seconds in a daemon thread (``at_once``: also
    when the block starts); the thread is stopped and joined when it ends."""
    stop = threading.Event()

    def loop() -> None:
        if at_once:
            action()
        while not stop.wait(interval):
            action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Liveness:
    """Keeps this worker's running trials alive and fails (then retries) the trials of dead workers."""

    def __init__(self, storage: BaseStorage, url: str, study_name: str, interval: int, grace: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> None:
        self.storage, self.url, self.study_name = storage, url, study_name
        self.interval, self.grace, self.on_stale = interval, grace, on_stale
        self.journal = isinstance(storage, JournalStorage)

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        """While the block runs, keep ``trial`` marked alive (journal files; RDB heartbeats are Optuna's)."""
        if not self.journal:
            yield
            return

        def beat() -> None:
            try:
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except OSError as e:  # a shared file system hiccup: the next beat tries again
                log.warning("trial %d: heartbeat not written (%s)", trial.number, e)

        with every(self.interval, beat, f"heartbeat-{trial.number}", at_once=True):
            yield

    def before_claim(self, study: optuna.Study) -> None:
        """Fail dead workers' trials before a new trial is claimed (on RDB storages ``study.optimize`` does
        this itself, just before it asks for the trial)."""
        if self.journal:
            self.fail_stale(study)

    def fail_stale(self, study: optuna.Study) -> None:
        """Fail the running trials whose worker stopped sending heartbeats; each goes to ``on_stale``.

        Journal files: the caller holds the study lock (two workers must not retry one trial twice).
        """
        if not self.journal:
            # Optuna's own check, which study.optimize runs before each trial in a block that ignores its
            # ExperimentalWarning the same way (catch_warnings is process-wide: should the two blocks overlap
            # in two threads, the filter state they restore differs only in that warning). It hands each
            # failed trial to the storage's stale callback, i.e. on_stale.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            return
        clock = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.user_attrs.get(HEARTBEAT_ATTR)
            started = trial.datetime_start.timestamp() if trial.datetime_start else clock
            last = max(started, beat) if isinstance(beat, (int, float)) else started  # a retry inherits an old beat
            if clock - last <= self.grace:
                continue
            try:
                failed = study.tell(trial.number, state=TrialState.FAIL)
            except TRIAL_ALREADY_FINISHED:
                continue  # its worker finished it after all
            self.on_stale(study, failed)

    @contextlib.contextmanager
    def watching(self, study: optuna.Study) -> Iterator[None]:
        """While the block runs, look for dead workers' trials every interval (so they are failed within
        the grace period even while every live worker is busy with a long trial)."""

        def watch() -> None:
            try:
                with study_lock(self.url, self.study_name, getattr(self.storage, "reconnect", None)):
                    self.fail_stale(study)
            except (*STORAGE_ERRORS, OSError) as e:  # the storage is away: the workers report it
                log.debug("looking for dead workers' trials failed: %s", first_line(e))

        with every(self.interval, watch, "stale-trials"):
            yield
