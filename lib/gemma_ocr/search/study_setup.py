"""Opening a search's study: create it or load it, check it suits this search, choose its sampler, record its definition.

What the study stores beside its trials (user attributes): the search definition (:data:`CONFIG_ATTR`, read back
by ``--resume``), the objective's metric, how many workers opened it (each derives its own sampler seed) and the
TPE settings it samples with.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from typing import Any

import optuna

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.backends import Backend, objective_metrics, objective_of, study_metric
from gemma_ocr.search.config import SearchSettings
from gemma_ocr.search.export import jsonable, now
from gemma_ocr.search.liveness import Liveness, StaleTrials
from gemma_ocr.search.pruning import make_pruner
from gemma_ocr.search.space import ParamSpec, space_to_dict
from gemma_ocr.search.storage import mask, open_storage, study_lock

log = logging.getLogger("gemma_ocr.search.runner")  # a worker's lines keep the logger name they are known by

CONFIG_ATTR = "gemma_ocr_search"  # study user attribute holding the search definition (for --resume)
#: The settings stored with the study beside its search space and fixed parameters (a --resume without --config reuses them).
STORED_SETTINGS = ("search_mode", "backend", "objective", "pruner", "pruner_n_startup_trials", "pruner_n_warmup_steps",
                   "pruner_interval_steps", "base_output_dir")
WORKERS_ATTR = "gemma_ocr_workers"  # how many workers have opened the study (each derives its own sampler seed)
SAMPLER_ATTR = "gemma_ocr_sampler"  # the TPE settings the study samples with (kept for --resume)
#: TPESampler's settings, all stated: Optuna 5 changed its defaults (multivariate and constant_liar on; off in 4.x), so
#: a study samples the same way on Optuna 4 and 5. Multivariate TPE models the parameters jointly (learning rate
#: with epochs, rank with alpha); the constant liar keeps parallel workers from asking for the same point.
TPE_SETTINGS: dict[str, Any] = {"multivariate": True, "constant_liar": True, "n_startup_trials": 10, "n_ei_candidates": 24}


def check_compatible(study: optuna.Study, space: dict[str, ParamSpec], source: str) -> None:
    """Refuse a space whose distributions Optuna cannot mix with the study's earlier trials."""
    seen: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name not in space or name in seen:
                continue
            new = space[name].distribution()
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
            except ValueError as e:
                raise GemmaOcrError(
                    f"{source}: parameter {name!r} is now {space[name].describe()}, but study {study.study_name!r} "
                    f"sampled it from {old} (trial {trial.number}); Optuna cannot mix the two ({e}). Keep the "
                    "original definition to resume, or start a new study with another --study-name"
                ) from None
            if old != new:
                log.warning("parameter %s changed from %s to %s; earlier trials still count", name, old, new)
            seen.add(name)


def worker_seed(seed: int | None, worker: int) -> int | None:
    """The sampler seed of a study's ``worker``-th worker: ``seed`` itself for the first, one derived
    from it for each later one (a resumed study, another process), so that no worker replays another's
    points. None stays None (each worker seeds from the OS)."""
    if seed is None or worker == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{worker}".encode()).digest()[:4], "big")


def tpe_sampler(study: optuna.Study, seed: int | None) -> optuna.samplers.TPESampler:
    """The study's TPE sampler: the settings stored with it (a resumed study keeps its own), else :data:`TPE_SETTINGS`,
    which are then stored."""
    stored = study.user_attrs.get(SAMPLER_ATTR)
    chosen = {k: stored.get(k, v) for k, v in TPE_SETTINGS.items()} if isinstance(stored, dict) else dict(TPE_SETTINGS)
    if stored != chosen:
        study.set_user_attr(SAMPLER_ATTR, chosen)
    with warnings.catch_warnings():  # one thread still: Optuna 4.x flags multivariate/constant_liar as experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, **chosen)


def sampler(settings: SearchSettings, study: optuna.Study, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE for a bayesian search; uniform sampling otherwise (grid points are enqueued as fixed parameters)."""
    if settings.search_mode == "bayesian":
        return tpe_sampler(study, seed)
    return optuna.samplers.RandomSampler(seed=seed)


class SearchStudy:
    """The study a worker works on, with its storage and the watch over its workers' heartbeats.

    Filled in as it opens: should opening fail after the study was created, :meth:`discard_if_unused` still
    removes it again."""

    def __init__(self, settings: SearchSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.study: optuna.Study | None = None
        self.storage: Any = None
        self.liveness: Liveness | None = None
        self.created = False  # whether this run created the study
        self.meta: dict[str, Any] = {}  # the search's description written beside the best parameters

    def lock(self) -> Any:
        """The study-wide lock a worker holds from counting the trials until its own trial exists."""
        return study_lock(self.settings.storage, self.settings.study_name, getattr(self.storage, "reconnect", None))

    def open(self) -> None:
        """Create the study, or load it and check it suits this search; record the search definition."""
        settings, backend = self.settings, self.backend
        stale = StaleTrials(settings.grace_period)
        with warnings.catch_warnings():  # one thread still: Optuna flags its heartbeat arguments as experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.storage = open_storage(settings.storage, (settings.heartbeat_interval, settings.grace_period, stale),
                                        settings.storage_retry_timeout)
        self.liveness = Liveness(self.storage, settings.storage, settings.study_name, settings.heartbeat_interval,
                                 settings.grace_period, stale)
        objectives = objective_metrics(backend)
        metric, directions, pruner = study_metric(backend), [d for _, d in objectives], make_pruner(settings)
        worker = self._create_or_load(directions, pruner)
        study = self.study
        self._check_objective(metric)
        seed = worker_seed(settings.sampler_seed, worker)
        if seed != settings.sampler_seed:
            log.info("sampler seed %d (worker %d of study %s, derived from --sampler-seed %d)", seed, worker,
                     settings.study_name, settings.sampler_seed)
        study.sampler = sampler(settings, study, seed)
        self._check_directions(metric, directions)
        check_compatible(study, settings.search_space, settings.space_source)
        self.meta = {
            "search_mode": settings.search_mode,
            "backend": backend.name,
            "objective": objective_of(backend),
            "storage": mask(settings.storage),
            "search_space": space_to_dict(settings.search_space),
        }
        self._record_definition(metric)

    def _create_or_load(self, directions: list[str], pruner: Any) -> int:
        """Create the study, or load it; this worker's number in it."""
        name = self.settings.study_name
        with self.lock():
            try:
                self.study = optuna.create_study(study_name=name, storage=self.storage, pruner=pruner,
                                                 directions=directions)
                self.created = True
            except optuna.exceptions.DuplicatedStudyError:
                self.study = optuna.load_study(study_name=name, storage=self.storage, pruner=pruner)
            worker = int(self.study.user_attrs.get(WORKERS_ATTR, 0))
            self.study.set_user_attr(WORKERS_ATTR, worker + 1)
        return worker

    def _check_objective(self, metric: str) -> None:
        stored = self.study.user_attrs.get("metric")
        if stored and stored != metric and self.study.get_trials(deepcopy=False):
            raise GemmaOcrError(
                f"study {self.settings.study_name!r} optimises {stored}; --objective {objective_of(self.backend)} "
                f"({metric}) would put its values beside those: resume it with its own objective, or use another "
                "--study-name")

    def _check_directions(self, metric: str, directions: list[str]) -> None:
        if [d.name.lower() for d in self.study.directions] != directions:
            raise GemmaOcrError(
                f"study {self.settings.study_name!r} {', '.join(d.name.lower() for d in self.study.directions)}s, "
                f"but backend {self.backend.name} {', '.join(directions)}s {metric}; use another --study-name"
            )

    def _record_definition(self, metric: str) -> None:
        """Store the search definition with the study (a --resume without --config reads it back)."""
        settings = self.settings
        self.study.set_user_attr(CONFIG_ATTR, jsonable({
            "search_space": space_to_dict(settings.search_space),
            "fixed": settings.fixed,
            "settings": {name: getattr(settings, name) for name in STORED_SETTINGS},
            "metric": metric,
            "updated": now(),
        }))
        self.study.set_user_attr("metric", metric)

    def discard_if_unused(self) -> None:
        """Delete the study again when this run created it and no trial was started in it."""
        if self.created and self.study is not None and not self.study.get_trials(deepcopy=False):
            optuna.delete_study(study_name=self.settings.study_name, storage=self.storage)
            log.info("study %s had no trial: removed it again", self.settings.study_name)
