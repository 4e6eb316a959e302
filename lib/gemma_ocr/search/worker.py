"""The worker loop: claim a trial, run it through ``study.optimize`` (one trial per call), again until done.

Each trial runs through ``study.optimize``, so Optuna records its heartbeats, fails the trials of dead workers
before asking for a new one and tells the result. With ``n_jobs`` > 1 the loop runs in that many threads; a lost
storage is waited for (``storage_retry_timeout``), a trial whose result the study did not take is told again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import optuna
from optuna.trial import FrozenTrial, TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.backends import Backend
from gemma_ocr.search.claims import TrialClaims
from gemma_ocr.search.config import SearchSettings
from gemma_ocr.search.liveness import TRIAL_ALREADY_FINISHED
from gemma_ocr.search.storage import STORAGE_ERRORS, connection_error, first_line, mask, retrying
from gemma_ocr.search.trial_objective import TrialObjective
from gemma_ocr.search.trial_progress import BestConfigExport, TrialProgress
from gemma_ocr.search.worker_state import WorkerState

log = logging.getLogger("gemma_ocr.search.runner")  # a worker's lines keep the logger name they are known by

WAIT_POLL_S = 2.0  # how often a waiting worker looks whether the trials it waits for ended (or need a retry)


class SearchWorker:
    """One worker process: its budget, its threads, its trials."""

    def __init__(self, settings: SearchSettings, backend: Backend,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        self.s = settings
        self.claims = TrialClaims(settings)  # refuses a grid of continuous ranges
        self.state = WorkerState(settings, backend)
        self.export = BestConfigExport(self.state)
        self.progress = TrialProgress(self.state, self.export, callbacks)
        self.objective = TrialObjective(self.state)
        self.waited = False  # whether this worker said it waits for other workers' trials

    def run(self) -> None:
        """Run this worker's trials (in ``n_jobs`` threads) until its budget, the study's or the grid is spent."""
        state = self.state
        self.progress.open_bar(self.claims.total(state.study))
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial is logged here, in one line (tracebacks: results files)
        try:
            with state.opened.liveness.watching(state.study):
                if self.s.n_jobs <= 1:
                    self.loop()
                else:
                    with ThreadPoolExecutor(self.s.n_jobs, thread_name_prefix="trial") as pool:
                        for f in [pool.submit(self.loop) for _ in range(self.s.n_jobs)]:
                            f.result()
        except BaseException:
            state.stop.set()  # other threads finish their trial and start no new one
            raise
        finally:
            optuna.logging.set_verbosity(verbosity)
            self.progress.close_bar()

    def loop(self) -> None:
        """One thread's trials: step after step, through storage outages, until there is nothing left to run."""
        while True:
            try:
                verdict = self.step()
            except STORAGE_ERRORS as e:
                if not connection_error(e):
                    raise
                self._storage_lost(e)
                continue
            if verdict == "done":
                return
            if verdict == "wait":
                if not self.waited:
                    self.waited = True
                    log.info("the study's trials are all taken; waiting for those running on other workers (a dead "
                             "worker's trial is failed after %d s and run again here)", self.s.grace_period)
                self.state.stop.wait(min(self.s.heartbeat_interval, WAIT_POLL_S))

    def _storage_lost(self, e: BaseException) -> None:
        """Wait a moment and try again, or stop once the storage has been away longer than its retry timeout."""
        reconnect = getattr(self.state.opened.storage, "reconnect", None)
        if reconnect is None or reconnect.exhausted:
            waited = f" for more than {reconnect.timeout:.0f} s" if reconnect is not None else ""
            raise GemmaOcrError(
                f"lost the study storage {mask(self.s.storage)}{waited} ({first_line(e)}); this worker stopped. "
                "Its running trial is failed and run again once the storage is back: rerun with --resume"
            ) from None
        log.warning("study storage: %s; trying again", first_line(e))
        self.state.stop.wait(1.0)

    def step(self) -> str:
        """Claim the next trial and run it: "ran", "wait" or "done" (see :meth:`TrialClaims.slot`)."""
        state = self.state
        if not self.claims.take(state.stop.is_set()):
            return "done"
        verdict = "done"
        with contextlib.ExitStack() as claim:
            state.local.claim, state.local.number = claim, None
            try:
                claim.enter_context(state.opened.lock())
                verdict = self.claims.slot(state.study, state.opened.liveness)
            finally:
                if verdict != "run":
                    claim.close()
                    self.claims.give_back()
            if verdict == "run":
                verdict = "ran"
                self.run_claimed()  # the objective lets go of the claim as soon as its trial exists
        return verdict

    def run_claimed(self) -> None:
        """Run the claimed trial with ``study.optimize``: heartbeats, dead workers' trials failed, tell."""
        state = self.state
        try:
            state.study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[self.progress.finished])
        except Exception as e:  # from Optuna's side of the loop: the objective's own errors are caught there
            number = state.local.number
            told = isinstance(e, TRIAL_ALREADY_FINISHED)  # the trial was failed meanwhile
            # when the storage is away, Optuna 5.0's tell can also end in an UnboundLocalError of its own
            if number is None or number not in state.docs or not (told or connection_error(e)):
                raise  # before the trial started: the worker loop tries again or stops
            self.tell_again(number)
        finally:
            number = state.local.number
            if number is not None and number in state.docs:  # interrupted before the trial was told
                state.write(number, state.docs.pop(number))

    def tell_again(self, number: int) -> None:
        """The study did not take this trial's result: the storage was away, or it had failed the trial
        as a dead worker's (no heartbeat came through for the grace period, e.g. a long outage)."""
        state = self.state
        doc = state.docs[number]
        trial_state = TrialState[doc["state"]]
        value = doc.get("values") or doc["value"] if trial_state == TrialState.COMPLETE else None
        try:
            frozen = retrying(lambda: state.study.tell(number, value, state=trial_state, skip_if_finished=True),
                              f"trial {number}: recording its result")
        except STORAGE_ERRORS:
            doc["error"] = doc["error"] or "the study storage was unreachable when the trial ended: its result is not in the study"
            raise
        if frozen.state != trial_state:
            doc["error"] = (f"the study failed this trial while it ran (no heartbeat reached it for {self.s.grace_period} s, "
                            f"e.g. during a storage outage) and runs it again; the result here is not in the study")
            log.warning("trial %d: %s", number, doc["error"])
        self.progress.finished(state.study, frozen)
