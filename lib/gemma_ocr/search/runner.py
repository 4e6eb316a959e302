"""Running a search: resolve settings, open/resume the study, let workers run trials, export the best.

Each trial runs through ``study.optimize`` (one trial per call), so Optuna records its heartbeats,
fails the trials of dead workers before asking for a new one and tells the result. Two guarantees
need more than Optuna's loop, and get one small piece each:

* a study-wide budget (``max_total_trials``, a grid) that racing workers never overrun: a worker
  claims its trial under :func:`~gemma_ocr.search.storage.study_lock`, held from the count until the
  trial exists (``MaxTrialsCallback`` only stops a worker after a trial, once the cap is overrun);
* journal files, which have no heartbeats in Optuna: :mod:`gemma_ocr.search.liveness`.

So several threads (``n_jobs``), processes and machines share one study: trial numbers never
collide, a grid point is run once, the cap holds, and a dead worker's trial is failed after the
grace period and run again, by a worker still running or by the next ``--resume``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import check_writable
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.search.backends import (
    DEFAULT_SPACES,
    Backend,
    TrialContext,
    get_backend,
    objective_metrics,
    objective_of,
    study_metric,
    use_objective,
)
from gemma_ocr.search.config import (
    BUILTIN_SPACE,
    DEFAULT_N_TRIALS,
    DEFAULT_SEARCH_SPACE,
    FixedOverrides,
    SearchArguments,
    SearchFile,
    SearchSettings,
    load_search_config,
    study_layer,
)
from gemma_ocr.search.export import (
    best_trial,
    check_trial_dirs,
    export_best,
    jsonable,
    now,
    objective_comment,
    pareto_front,
    trial_counts,
    trial_results_path,
    write_trial_results,
)
from gemma_ocr.search.liveness import (RESULTS_ATTR, TRIAL_ALREADY_FINISHED, Liveness, StaleTrials, counted, retry_of,
                                       running_trials)
from gemma_ocr.search.pruning import TrialReporter, make_pruner
from gemma_ocr.search.space import ParamSpec, build_grid, grid_points, grid_size, parse_search_space, space_to_dict, suggest_all
from gemma_ocr.search.storage import (
    STORAGE_ERRORS,
    connection_error,
    default_storage,
    existing_storage,
    first_line,
    mask,
    normalize_url,
    open_storage,
    retrying,
    study_exists,
    study_lock,
)
from gemma_ocr.settings import Layer, resolve

log = logging.getLogger(__name__)

CONFIG_ATTR = "gemma_ocr_search"  # study user attribute holding the search definition (for --resume)
#: The settings stored with the study beside its search space and fixed parameters (a --resume without --config reuses them).
STORED_SETTINGS = ("search_mode", "backend", "objective", "pruner", "pruner_n_startup_trials", "pruner_n_warmup_steps",
                   "pruner_interval_steps", "base_output_dir")
WAIT_POLL_S = 2.0  # how often a waiting worker looks whether the trials it waits for ended (or need a retry)
WORKERS_ATTR = "gemma_ocr_workers"  # how many workers have opened the study (each derives its own sampler seed)
SAMPLER_ATTR = "gemma_ocr_sampler"  # the TPE settings the study samples with (kept for --resume)
#: TPESampler's settings, all stated: Optuna 5 changed its defaults (multivariate and constant_liar on; off in 4.x), so
#: a study samples the same way on Optuna 4 and 5. Multivariate TPE models the parameters jointly (learning rate
#: with epochs, rank with alpha); the constant liar keeps parallel workers from asking for the same point.
TPE_SETTINGS: dict[str, Any] = {"multivariate": True, "constant_liar": True, "n_startup_trials": 10, "n_ei_candidates": 24}


@dataclass
class SearchSummary:
    """What a worker did and where the study stands."""

    study_name: str
    storage: str
    trials_run: list[int]
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    best_params_path: Path | None
    best_config_path: Path | None
    metric: str
    #: A two-objective study's Pareto front: ``{"trial", "values": {metric: value}, "params"}`` each (else empty).
    pareto_front: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def default_study_name() -> str:
    """``hpsearch-YYYYmmdd-HHMMSS``."""
    return "hpsearch-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stored_search(url: str, name: str, resume: bool) -> SearchFile | None:
    """The search definition stored with study ``name`` (None when there is no such study, or it was made elsewhere);
    an existing study without ``resume`` is refused."""
    storage = existing_storage(url)
    if storage is None or not study_exists(storage, name):
        if resume:
            log.info("no study %r in %s yet: creating it", name, mask(url))
        return None
    if not resume:
        raise GemmaOcrError(f"study {name!r} already exists in {mask(url)}; pass --resume to add trials to it, "
                            "or choose another --study-name")
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(CONFIG_ATTR)
    if not isinstance(stored, dict):
        return None
    source, space_source = f"study {name} (stored definition)", f"study {name} (stored search space)"
    return SearchFile(parse_search_space(stored.get("search_space"), space_source), dict(stored.get("fixed") or {}),
                      study_layer(source, stored.get("settings") or {}), source, space_source)


def builtin_search(backend: str) -> SearchFile:
    """The built-in search space of ``backend``, without fixed parameters."""
    where = f"{BUILTIN_SPACE} of the {backend} backend (give --config a file with one)"
    return SearchFile(parse_search_space(DEFAULT_SPACES.get(backend, DEFAULT_SEARCH_SPACE), where),
                      source=f"<default search space of {backend}>", space_source=where)


def _layer(values: Layer | Mapping[str, Any] | None, **more: Any) -> Layer:
    """The parser's layer, or a caller's dict of values, with ``more`` added (``None`` = not given)."""
    layer = values if isinstance(values, Layer) else Layer("settings", dict(values or {}))
    return Layer(layer.source, {k: v for k, v in {**layer.values, **more}.items() if v is not None}, layer.flags)


def resolve_settings(config: str | os.PathLike[str] | None = None, *, overrides: Layer | Mapping[str, Any] | None = None,
                     fixed_overrides: Layer | Mapping[str, Any] | None = None,
                     default_config: str | os.PathLike[str] | None = None, **given: Any) -> SearchSettings:
    """Combine defaults < definition stored with the study (on resume) < config file < flags.

    ``overrides`` are :class:`SearchArguments` values given as flags (the parser's layer, or a dict; ``given``
    adds more, e.g. ``study_name=``, ``resume=``); ``fixed_overrides`` are :class:`FixedOverrides`. Without a
    config file and a stored definition, ``default_config`` (when it exists) gives the gemma backend's fixed
    parameters. Nothing is created here: no study, no database file.
    """
    flags = _layer(overrides, **given)
    file = load_search_config(config) if config else None
    first = resolve(SearchArguments, *([file.settings] if file else []), flags)
    name = first.study_name or default_study_name()
    url = normalize_url(first.storage or default_storage(name, first.studies_dir))
    stored = stored_search(url, name, first.resume)
    if file is None and stored is None and first.backend == "gemma" and default_config and Path(default_config).is_file():
        file = load_search_config(default_config)
        log.info("no --config: fixed parameters from %s, default search space", default_config)
    args = resolve(SearchArguments, *(d.settings for d in (stored, file) if d is not None), flags)
    search = file or stored or builtin_search(args.backend)
    if search is stored:
        log.info("resuming %s with its stored search space (%s)", name, ", ".join(search.search_space))
    fixed_flags = {k: v for k, v in dataclasses.asdict(resolve(FixedOverrides, _layer(fixed_overrides))).items()
                   if v is not None}
    clash = sorted(set(fixed_flags) & set(search.search_space))
    if clash:
        raise GemmaOcrError(f"{', '.join(clash)} is given as a flag but is also searched ({search.space_source}); drop one")
    if args.storage_retry_timeout + args.heartbeat_interval >= args.grace_period:
        log.warning("storage_retry_timeout + heartbeat_interval (%s s) >= grace_period (%s s): after an outage that long, "
                    "a live worker's trial may be taken for a dead one's and run again",
                    args.storage_retry_timeout + args.heartbeat_interval, args.grace_period)
    n_trials = args.n_trials if args.n_trials is not None or args.search_mode == "grid" else DEFAULT_N_TRIALS
    return SearchSettings(**{**dataclasses.asdict(args), "study_name": name, "storage": url, "n_trials": n_trials},
                          search_space=search.search_space, fixed={**search.fixed, **fixed_flags},
                          source=search.source, space_source=search.space_source)


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


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _matches(point: dict[str, Any], params: dict[str, Any]) -> bool:
    return all(k in params and _same_value(v, params[k]) for k, v in point.items())



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


class _Search:
    """One worker process: its budget, its threads, its trials."""

    def __init__(self, settings: SearchSettings, backend: Backend,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        self.s = settings
        self.backend = backend
        self.callbacks = tuple(callbacks)  # told of each trial this worker finishes, after its files are written
        self.grid = build_grid(settings.search_space, settings.space_source) if settings.search_mode == "grid" else None
        self.points = grid_points(self.grid) if self.grid else []
        self.tried: list[dict[str, Any]] = []  # grid points this worker claimed (a failing one is not rerun here)
        self.deadline = time.monotonic() + settings.timeout if settings.timeout else None
        self.left = settings.n_trials
        self.budget_lock = threading.Lock()
        self.trials_run: list[int] = []
        self.docs: dict[int, dict[str, Any]] = {}  # results documents of this worker's running trials
        self.owned: set[int] = set()  # trials whose folder is this study's to write
        self.local = threading.local()  # per thread: the claim (study lock) and the trial it started
        self.stop = threading.Event()
        self.fatal: GemmaOcrError | None = None
        self.bar: Any = None
        self.study: optuna.Study | None = None
        self.created = False  # whether this run created the study
        self.waited = False  # whether this worker said it waits for other workers' trials

    def _lock(self) -> Any:
        return study_lock(self.s.storage, self.s.study_name, getattr(self.storage, "reconnect", None))

    def open(self) -> None:
        """Create the study, or load it and check it suits this search; record the search definition."""
        settings, backend = self.s, self.backend
        stale = StaleTrials(settings.grace_period)
        with warnings.catch_warnings():  # one thread still: Optuna flags its heartbeat arguments as experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.storage = open_storage(settings.storage, (settings.heartbeat_interval, settings.grace_period, stale),
                                        settings.storage_retry_timeout)
        self.liveness = Liveness(self.storage, settings.storage, settings.study_name, settings.heartbeat_interval,
                                 settings.grace_period, stale)
        objectives = objective_metrics(backend)
        metric, directions, pruner = study_metric(backend), [d for _, d in objectives], make_pruner(settings)
        with self._lock():
            try:
                self.study = optuna.create_study(study_name=settings.study_name, storage=self.storage, pruner=pruner,
                                                 directions=directions)
                self.created = True
            except optuna.exceptions.DuplicatedStudyError:
                self.study = optuna.load_study(study_name=settings.study_name, storage=self.storage, pruner=pruner)
            worker = int(self.study.user_attrs.get(WORKERS_ATTR, 0))
            self.study.set_user_attr(WORKERS_ATTR, worker + 1)
        stored = self.study.user_attrs.get("metric")
        if stored and stored != metric and self.study.get_trials(deepcopy=False):
            raise GemmaOcrError(
                f"study {settings.study_name!r} optimises {stored}; --objective {objective_of(backend)} ({metric}) "
                f"would put its values beside those: resume it with its own objective, or use another --study-name")
        seed = worker_seed(settings.sampler_seed, worker)
        if seed != settings.sampler_seed:
            log.info("sampler seed %d (worker %d of study %s, derived from --sampler-seed %d)", seed, worker,
                     settings.study_name, settings.sampler_seed)
        self.study.sampler = self._sampler(seed)
        if [d.name.lower() for d in self.study.directions] != directions:
            raise GemmaOcrError(
                f"study {settings.study_name!r} {', '.join(d.name.lower() for d in self.study.directions)}s, but backend "
                f"{backend.name} {', '.join(directions)}s {metric}; use another --study-name"
            )
        check_compatible(self.study, settings.search_space, settings.space_source)
        self.meta = {
            "search_mode": settings.search_mode,
            "backend": backend.name,
            "objective": objective_of(backend),
            "storage": mask(settings.storage),
            "search_space": space_to_dict(settings.search_space),
        }
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
            optuna.delete_study(study_name=self.s.study_name, storage=self.storage)
            log.info("study %s had no trial: removed it again", self.s.study_name)

    def _sampler(self, seed: int | None) -> optuna.samplers.BaseSampler:
        if self.s.search_mode == "bayesian":
            assert self.study is not None
            return tpe_sampler(self.study, seed)
        # grid points are enqueued as fixed parameters; random mode samples uniformly
        return optuna.samplers.RandomSampler(seed=seed)

    # ------------------------------------------------------------------ claiming

    def _free_points(self, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
        """Grid points neither done (complete/pruned), running, queued, nor already tried by this worker."""
        live = [{**t.system_attrs.get("fixed_params", {}), **t.params} for t in trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)]
        return [p for p in self.points if not any(_matches(p, params) for params in live + self.tried)]

    def _slot(self) -> str:
        """Under the study lock: "run" when this worker may start a trial now; "wait" when the study-wide
        budget is taken but trials of other workers still run (should one die, its retry comes here);
        "done" otherwise."""
        self.liveness.before_claim(self.study)
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return "run"  # a queued trial goes first: a dead worker's retry, or a grid point not yet started
        full = self.s.max_total_trials is not None and counted(trials) >= self.s.max_total_trials
        if not full and self.grid is not None:
            free = self._free_points(trials)
            if free:
                self.tried.append(free[0])
                self.study.enqueue_trial(free[0], user_attrs={"grid_point": True})
            full = not free
        if not full:
            return "run"
        me = worker_id()
        return "wait" if any(t.user_attrs.get("worker") != me for t in running_trials(trials)) else "done"

    def _step(self) -> str:
        """Claim the next trial and run it: "ran", "wait" or "done" (see :meth:`_slot`)."""
        if self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline):
            return "done"
        with self.budget_lock:
            if self.left is not None and self.left <= 0:
                return "done"
            if self.left is not None:
                self.left -= 1
        verdict = "done"
        with contextlib.ExitStack() as claim:
            self.local.claim, self.local.number = claim, None
            try:
                claim.enter_context(self._lock())
                verdict = self._slot()
            finally:
                if verdict != "run":
                    claim.close()
                    with self.budget_lock:
                        if self.left is not None:
                            self.left += 1
            if verdict == "run":
                verdict = "ran"
                self._run()  # the objective lets go of the claim as soon as its trial exists
        return verdict

    def _run(self) -> None:
        """Run the claimed trial with ``study.optimize``: heartbeats, dead workers' trials failed, tell."""
        try:
            self.study.optimize(self._objective, n_trials=1, catch=(Exception,), callbacks=[self._finished])
        except Exception as e:  # from Optuna's side of the loop: the objective's own errors are caught there
            number = self.local.number
            told = isinstance(e, TRIAL_ALREADY_FINISHED)  # the trial was failed meanwhile
            # when the storage is away, Optuna 5.0's tell can also end in an UnboundLocalError of its own
            if number is None or number not in self.docs or not (told or connection_error(e)):
                raise  # before the trial started: the worker loop tries again or stops
            self._tell_again(number)
        finally:
            number = self.local.number
            if number is not None and number in self.docs:  # interrupted before the trial was told
                self._write(number, self.docs.pop(number))

    def _tell_again(self, number: int) -> None:
        """The study did not take this trial's result: the storage was away, or it had failed the trial
        as a dead worker's (no heartbeat came through for the grace period, e.g. a long outage)."""
        doc = self.docs[number]
        state = TrialState[doc["state"]]
        value = doc.get("values") or doc["value"] if state == TrialState.COMPLETE else None
        try:
            frozen = retrying(lambda: self.study.tell(number, value, state=state, skip_if_finished=True),
                              f"trial {number}: recording its result")
        except STORAGE_ERRORS:
            doc["error"] = doc["error"] or "the study storage was unreachable when the trial ended: its result is not in the study"
            raise
        if frozen.state != state:
            doc["error"] = (f"the study failed this trial while it ran (no heartbeat reached it for {self.s.grace_period} s, "
                            f"e.g. during a storage outage) and runs it again; the result here is not in the study")
            log.warning("trial %d: %s", number, doc["error"])
        self._finished(self.study, frozen)

    # ------------------------------------------------------------------ one trial

    def _objective(self, trial: Trial) -> float | list[float]:
        number = self.local.number = trial.number
        trial_dir = self.s.base_output_dir / f"trial_{number}"
        results_path = trial_results_path(self.s.base_output_dir, number)
        doc = self.docs[number] = {
            "study_name": self.s.study_name, "trial_number": number, "state": "RUNNING", "params": {},
            "metrics": {}, "value": None, "objective": objective_of(self.backend), "metric": self.backend.metric,
            "direction": self.backend.direction, "error": None,
            "search_mode": self.s.search_mode, "backend": self.backend.name, "output_dir": str(trial_dir),
            "worker": worker_id(), "retry_of": None, "started": now(), "finished": None, "duration_s": None,
        }
        started = time.monotonic()
        reporter: TrialReporter | None = None
        try:  # everything that can fail is in here: Optuna's own log of a failed trial is turned down (see run)
            self.local.claim.close()  # the trial exists: other workers may claim theirs
            trials = retrying(lambda: self.study.get_trials(deepcopy=False), f"trial {number}")
            doc["retry_of"] = retry_of(next(t for t in trials if t.number == number))
            check_trial_dirs(self.s.base_output_dir, self.s.study_name, [number])  # another study may have started since
            self.owned.add(number)
            doc["params"] = params = retrying(lambda: suggest_all(trial, self.s.search_space), f"trial {number}")
            for key, value in (("worker", doc["worker"]), (RESULTS_ATTR, str(results_path.resolve()))):
                retrying(lambda: trial.set_user_attr(key, value), f"trial {number}")
            trial_dir.mkdir(parents=True, exist_ok=True)
            write_trial_results(results_path, doc)
            again = f" (retry of trial {doc['retry_of']})" if doc["retry_of"] is not None else ""
            log.info("trial %d%s: %s", number, again, json.dumps(jsonable(params), ensure_ascii=False))
            reporter = TrialReporter(trial)
            ctx = TrialContext(self.s.study_name, number, params, dict(self.s.fixed), trial_dir, reporter,
                               concurrent=self.s.n_jobs > 1)
            with self.liveness.beating(trial):
                metrics = self.backend.run_trial(ctx)
            doc["metrics"] = metrics = jsonable(metrics)
            values = []
            for metric, _ in objective_metrics(self.backend):
                value = metrics.get(metric) if isinstance(metrics, dict) else None
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise GemmaOcrError(f"the objective {metric!r} is missing or not finite in the trial's metrics: {value!r}")
                values.append(float(value))
            doc.update(state="COMPLETE", value=values[0])
            if len(values) > 1:
                doc["values"] = values
                return values
            return values[0]
        except optuna.TrialPruned as e:
            doc.update(state="PRUNED", pruned=str(e) or "pruned")
            doc["intermediate"] = [list(x) for x in reporter.history] if reporter else []
            raise
        except KeyboardInterrupt:
            doc.update(state="FAIL", error="interrupted (KeyboardInterrupt)")
            self.stop.set()
            raise
        except Exception as e:  # any failure of one trial is recorded (Optuna marks it FAIL), the study goes on
            doc.update(state="FAIL", error=describe_error(e), traceback=traceback.format_exc(limit=20))
            log.error("trial %d failed: %s", number, doc["error"])
            if isinstance(e, GemmaOcrError) and not self.trials_run and not self._any_success():
                # a configuration error on the very first trial would repeat in every trial: stop here
                self.fatal = GemmaOcrError(f"trial {number} failed and the search stopped (the error would repeat "
                                           f"in every trial; it is recorded as FAIL): {e}")
                self.stop.set()
            raise
        finally:
            if "torch" in sys.modules:  # free what the trial held (the training's helper; without torch, nothing to free)
                from gemma_ocr.training.tune import release_memory

                release_memory()
            doc.update(finished=now(), duration_s=round(time.monotonic() - started, 3))
            self._record_attrs(trial, doc)

    def _record_attrs(self, trial: Trial, doc: dict[str, Any]) -> None:
        """The trial's metrics (without the per-step history, which stays in the results file) and error."""
        info = {"output_dir": doc["output_dir"], "worker": doc["worker"], "duration_s": doc["duration_s"]}
        if isinstance(doc["metrics"], dict):
            info.update({k: v for k, v in doc["metrics"].items() if k != "history"})
        try:
            trial.set_user_attr("metrics", info)
            if doc["error"]:
                trial.set_user_attr("error", doc["error"])
        except STORAGE_ERRORS as e:
            log.warning("trial %d: metrics not stored in the study (%s); they are in its results file", trial.number,
                        first_line(e))

    def _any_success(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _write(self, number: int, doc: dict[str, Any]) -> None:
        if number in self.owned:
            write_trial_results(trial_results_path(self.s.base_output_dir, number), doc)

    def _finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """After Optuna told the trial: its results file, the best configuration, progress."""
        doc = self.docs.pop(trial.number, None)
        if doc is None:
            return
        if trial.state != TrialState[doc["state"]]:
            doc["state_in_study"] = trial.state.name
        self._write(trial.number, doc)
        self.trials_run.append(trial.number)
        best = best_trial(study)
        if best is not None and best.number == trial.number:
            self.export(best)
        if self.bar is not None:
            self.bar.update(1)
            if best is not None:
                self.bar.set_postfix({f"best {self.backend.metric}": f"{best.values[0]:.4g}", "trial": best.number})
        shown = f"{doc['value']:.6g}" if doc["value"] is not None else "-"
        log.info("trial %d %s (%s %s)", trial.number, trial.state.name, self.backend.metric, shown)
        for callback in self.callbacks:
            callback(study, trial)

    def export(self, trial: FrozenTrial | None = None) -> tuple[Path, Path] | None:
        """Write the best parameters and configuration; None when no trial completed or they cannot be written."""
        try:
            best = trial or best_trial(self.study)
            if best is None:
                return None
            config = self.backend.export_config(dict(self.s.fixed), dict(best.params))
            config = {"_objective": objective_comment(self.study, best, objective_metrics(self.backend)), **config}
            return export_best(self.study, self.s.studies_dir, study_metric(self.backend), config, self.meta, best)
        except (GemmaOcrError, OSError, *STORAGE_ERRORS) as e:
            log.warning("best configuration not written: %s", first_line(e))
            return None

    # ------------------------------------------------------------------ loop

    def _worker(self) -> None:
        while True:
            try:
                verdict = self._step()
            except STORAGE_ERRORS as e:
                if not connection_error(e):
                    raise
                reconnect = getattr(self.storage, "reconnect", None)
                if reconnect is None or reconnect.exhausted:
                    waited = f" for more than {reconnect.timeout:.0f} s" if reconnect is not None else ""
                    raise GemmaOcrError(
                        f"lost the study storage {mask(self.s.storage)}{waited} ({first_line(e)}); this worker stopped. "
                        "Its running trial is failed and run again once the storage is back: rerun with --resume"
                    ) from None
                log.warning("study storage: %s; trying again", first_line(e))
                self.stop.wait(1.0)
                continue
            if verdict == "done":
                return
            if verdict == "wait":
                if not self.waited:
                    self.waited = True
                    log.info("the study's trials are all taken; waiting for those running on other workers (a dead "
                             "worker's trial is failed after %d s and run again here)", self.s.grace_period)
                self.stop.wait(min(self.s.heartbeat_interval, WAIT_POLL_S))

    def run(self) -> None:
        total = self.s.n_trials
        if self.grid is not None:
            trials = retrying(lambda: self.study.get_trials(deepcopy=False), "reading the study")
            queued = sum(1 for t in trials if t.state == TrialState.WAITING)
            remaining = len(self._free_points(trials)) + queued
            log.info("grid of %d points, %d still to run", grid_size(self.grid), remaining)
            if remaining == 0 and not running_trials(trials):
                log.info("every grid point of %s has been run already", self.s.study_name)
            total = remaining if total is None else min(total, remaining)
        if self.s.progress and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{self.s.study_name} trials", unit="trial", file=sys.stderr)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial is logged here, in one line (tracebacks: results files)
        try:
            with self.liveness.watching(self.study):
                if self.s.n_jobs <= 1:
                    self._worker()
                else:
                    with ThreadPoolExecutor(self.s.n_jobs, thread_name_prefix="trial") as pool:
                        for f in [pool.submit(self._worker) for _ in range(self.s.n_jobs)]:
                            f.result()
        except BaseException:
            self.stop.set()  # other threads finish their trial and start no new one
            raise
        finally:
            optuna.logging.set_verbosity(verbosity)
            if self.bar is not None:
                self.bar.close()


def describe_error(e: BaseException) -> str:
    """One line naming the failure; out-of-memory errors are labelled as such."""
    text = first_line(e) if str(e).strip() else ""
    kind = type(e).__name__
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower() or kind == "OutOfMemoryError":
        return f"out of memory ({kind}): {text}"
    return f"{kind}: {text}" if text else kind


def run_search(settings: SearchSettings, backend: Backend | None = None,
               callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> SearchSummary:
    """Run this worker's share of the study described by ``settings``; export the best configuration.

    ``callbacks``: called as Optuna's ``study.optimize`` callbacks are, ``(study, trial)``, after each trial this
    worker finishes (e.g. the main job's progress line)."""
    backend = use_objective(backend or get_backend(settings.backend), settings.objective)
    backend.validate(settings.fixed, settings.search_space, settings.source)
    search = _Search(settings, backend, callbacks)  # refuses a grid of continuous ranges; creates nothing yet
    check_trial_dirs(settings.base_output_dir, settings.study_name)
    check_writable(settings.base_output_dir, "--base-output-dir", folder=True)
    files = {where: where for where in (settings.source, settings.space_source) if Path(where).is_file()}
    exports = [Path(settings.studies_dir) / f"{settings.study_name}_best_{kind}.json" for kind in ("params", "config")]
    check_outputs_not_inputs({"the settings file": list(files)}, {"the best configuration's export": exports},
                             "choose another --study-name or --studies-dir (the export is <studies-dir>/<study>_best_"
                             "config.json)")
    log.info(
        "study %s (%s, %s backend) in %s", settings.study_name, settings.search_mode, backend.name, mask(settings.storage)
    )
    try:
        retrying(search.open, f"opening study {settings.study_name}")
        try:
            search.run()
        finally:
            exported = search.export()
    except BaseException:
        try:
            search.discard_if_unused()
        except (*STORAGE_ERRORS, OSError) as e:
            log.warning("could not check whether study %s is still empty: %s", settings.study_name, first_line(e))
        raise
    if search.fatal is not None:
        raise search.fatal
    best = best_trial(search.study)
    return SearchSummary(
        study_name=settings.study_name,
        storage=mask(settings.storage),
        trials_run=sorted(search.trials_run),
        counts=trial_counts(search.study),
        best_value=best.values[0] if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_params_path=exported[0] if exported else None,
        best_config_path=exported[1] if exported else None,
        metric=backend.metric,
        pareto_front=pareto_front(search.study, objective_metrics(backend)),
    )
