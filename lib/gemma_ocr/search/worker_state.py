"""What a worker's threads share: the study, the results documents of their running trials, the stop signal."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import optuna
from optuna.trial import TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.backends import Backend
from gemma_ocr.search.config import SearchSettings
from gemma_ocr.search.export import trial_results_path, write_trial_results
from gemma_ocr.search.study_setup import SearchStudy


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerState:
    """One worker process's trials: those it runs now (their results documents), those it finished, whether it stops."""

    def __init__(self, settings: SearchSettings, backend: Backend) -> None:
        self.s = settings
        self.backend = backend
        self.opened = SearchStudy(settings, backend)
        self.trials_run: list[int] = []
        self.docs: dict[int, dict[str, Any]] = {}  # results documents of this worker's running trials
        self.owned: set[int] = set()  # trials whose folder is this study's to write
        self.local = threading.local()  # per thread: the claim (study lock) and the trial it started
        self.stop = threading.Event()
        self.fatal: GemmaOcrError | None = None

    @property
    def study(self) -> optuna.Study | None:
        return self.opened.study

    def write(self, number: int, doc: dict[str, Any]) -> None:
        """Write a trial's results file (only into a folder this study owns)."""
        if number in self.owned:
            write_trial_results(trial_results_path(self.s.base_output_dir, number), doc)

    def any_success(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
