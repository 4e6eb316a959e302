"""Running a search: resolve settings, open/resume the study, let workers run trials, export the best.

Workers claim trials under :func:`~gemma_ocr.search.storage.study_lock`, so several threads
(``n_jobs``), processes and machines can share one study: trial numbers never collide, a grid point
is run once, and ``max_total_trials`` is a study-wide cap that racing workers do not overrun.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.backends import DEFAULT_SPACES, Backend, TrialContext, get_backend
from gemma_ocr.search.config import (
    BUILTIN_SPACE,
    DEFAULT_SEARCH_SPACE,
    SEARCH_MODES,
    PrunerSettings,
    SearchFile,
    load_search_config,
    parse_pruner,
)
from gemma_ocr.search.export import (
    best_trial,
    check_trial_dirs,
    export_best,
    jsonable,
    now,
    trial_counts,
    trial_results_path,
    write_trial_results,
)
from gemma_ocr.search.pruning import TrialReporter, make_pruner
from gemma_ocr.search.space import ParamSpec, build_grid, grid_points, grid_size, parse_search_space, space_to_dict
from gemma_ocr.search.storage import (
    DEFAULT_STUDIES_DIR,
    default_storage,
    existing_storage,
    mask,
    normalize_url,
    open_storage,
    study_exists,
    study_lock,
)

log = logging.getLogger(__name__)
# Workers use ask/tell with storage heartbeats (a dead worker's trial is failed, not left RUNNING);
# Optuna flags that combination although it works. Silence the flag, and the "experimental" notices.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_N_TRIALS = 20
DEFAULT_BASE_OUTPUT_DIR = Path("models/hyperparam_search")
CONFIG_ATTR = "gemma_ocr_search"  # study user attribute holding the search definition (for --resume)


@dataclass
class SearchSettings:
    """A fully resolved search."""

    study_name: str
    storage: str
    backend: str = "gemma"
    search_mode: str = "bayesian"
    search_space: dict[str, ParamSpec] = field(default_factory=lambda: parse_search_space(DEFAULT_SEARCH_SPACE))
    fixed: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = DEFAULT_N_TRIALS
    max_total_trials: int | None = None
    timeout: float | None = None
    n_jobs: int = 1
    seed: int | None = None
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    base_output_dir: Path = DEFAULT_BASE_OUTPUT_DIR
    studies_dir: Path = DEFAULT_STUDIES_DIR
    resume: bool = False
    source: str = "<default search space>"  # where the fixed parameters come from, for messages
    space_source: str = "search_space"  # where the search space comes from
    progress: bool = True


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


def default_study_name() -> str:
    """``hpsearch-YYYYmmdd-HHMMSS``."""
    return "hpsearch-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stored_definition(storage: Any, study_name: str) -> dict[str, Any] | None:
    """The search definition saved with an existing study (None for studies made elsewhere)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    value = study.user_attrs.get(CONFIG_ATTR)
    return value if isinstance(value, dict) else None


def resolve_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    fixed_overrides: dict[str, Any] | None = None,
    studies_dir: str | os.PathLike[str] = DEFAULT_STUDIES_DIR,
    default_config: str | os.PathLike[str] | None = None,
) -> SearchSettings:
    """Combine defaults < definition stored with the study (on resume) < config file < flags.

    ``overrides`` are study settings given as flags (search_mode, n_trials, backend, ...; ``None`` =
    not given); ``fixed_overrides`` are training parameters given as flags (model_name, input_data,
    instruction). Without a config file and a stored definition, ``default_config`` (when it exists)
    gives the fixed parameters. Nothing is created here: no study, no database file.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fixed_overrides = {k: v for k, v in (fixed_overrides or {}).items() if v is not None}
    file: SearchFile | None = load_search_config(config) if config else None
    file_settings = file.settings if file else {}

    name = study_name or file_settings.get("study_name") or default_study_name()
    url = normalize_url(storage or file_settings.get("storage") or default_storage(name, studies_dir))
    stored: dict[str, Any] | None = None
    opened = existing_storage(url)
    if opened is not None and study_exists(opened, name):
        if not resume:
            raise GemmaOcrError(
                f"study {name!r} already exists in {mask(url)}; pass --resume to add trials to it, "
                "or choose another --study-name"
            )
        stored = stored_definition(opened, name)
    elif resume:
        log.info("no study %r in %s yet: creating it", name, mask(url))

    def pick(key: str, default: Any) -> Any:
        for layer in (overrides, file_settings, (stored or {}).get("settings", {})):
            if key in layer and layer[key] is not None:
                return layer[key]
        return default

    backend = pick("backend", "gemma")
    if file is None and stored is None and backend == "gemma" and default_config and Path(default_config).is_file():
        file = load_search_config(default_config)
        log.info("no --config: fixed parameters from %s, default search space", default_config)
        file_settings = file.settings
    if file is not None:
        space, fixed, source, space_source = file.search_space, dict(file.fixed), file.source, file.space_source
    elif stored is not None:
        space_source = f"study {name} (stored search space)"
        space = parse_search_space(stored.get("search_space"), space_source)
        fixed, source = dict(stored.get("fixed") or {}), f"study {name} (stored definition)"
        log.info("resuming %s with its stored search space (%s)", name, ", ".join(space))
    else:
        space_source = f"{BUILTIN_SPACE} of the {backend} backend (give --config a file with one)"
        space = parse_search_space(DEFAULT_SPACES.get(backend, DEFAULT_SEARCH_SPACE), space_source)
        fixed, source = {}, f"<default search space of {backend}>"
    fixed.update(fixed_overrides)
    clash = sorted(set(fixed_overrides) & set(space))
    if clash:
        raise GemmaOcrError(f"{', '.join(clash)} is given as a flag but is also searched ({space_source}); drop one")

    mode = pick("search_mode", "bayesian")
    if mode not in SEARCH_MODES:
        raise GemmaOcrError(f"--search-mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    pruner = file_settings.get("pruner") if file is not None else None
    if pruner is None:
        pruner = parse_pruner((stored or {}).get("settings", {}).get("pruner"), f"study {name}")
    for key in ("type", "n_startup_trials", "n_warmup_steps"):
        if overrides.get(f"pruner_{key}") is not None:
            setattr(pruner, key, overrides[f"pruner_{key}"])
    if pruner.n_startup_trials < 0 or pruner.n_warmup_steps < 0:
        raise GemmaOcrError("pruner startup trials and warm-up steps must be >= 0")
    for key in ("n_trials", "n_jobs", "max_total_trials"):
        value = pick(key, None)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise GemmaOcrError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    timeout = pick("timeout", None)
    if timeout is not None and timeout <= 0:
        raise GemmaOcrError(f"--timeout must be positive seconds, got {timeout!r}")
    seed = pick("seed", None)
    if seed is not None and not 0 <= seed < 2**32:
        raise GemmaOcrError(f"--seed must be between 0 and 2**32 - 1, got {seed!r}")
    n_trials = pick("n_trials", None if mode == "grid" else DEFAULT_N_TRIALS)
    return SearchSettings(
        study_name=name,
        storage=url,
        backend=backend,
        search_mode=mode,
        search_space=space,
        fixed=fixed,
        n_trials=n_trials,
        max_total_trials=pick("max_total_trials", None),
        timeout=timeout,
        n_jobs=pick("n_jobs", 1),
        seed=seed,
        pruner=pruner,
        base_output_dir=Path(pick("base_output_dir", DEFAULT_BASE_OUTPUT_DIR)),
        studies_dir=Path(studies_dir),
        resume=resume,
        source=source,
        space_source=space_source,
        progress=bool(overrides.get("progress", True)),
    )


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


class _Search:
    """One worker process: its budget, its threads, its trials."""

    def __init__(self, settings: SearchSettings, backend: Backend) -> None:
        self.s = settings
        self.backend = backend
        self.grid = build_grid(settings.search_space, settings.space_source) if settings.search_mode == "grid" else None
        self.points = grid_points(self.grid) if self.grid else []
        self.deadline = time.monotonic() + settings.timeout if settings.timeout else None
        self.left = settings.n_trials
        self.budget_lock = threading.Lock()
        self.trials_run: list[int] = []
        self.stop = threading.Event()
        self.fatal: GemmaOcrError | None = None
        self.bar: Any = None
        self.study: optuna.Study | None = None
        self.created = False  # whether this run created the study

    def open(self) -> None:
        """Create the study, or load it and check it suits this search; record the search definition."""
        settings, backend = self.s, self.backend
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.storage = open_storage(settings.storage)
        direction = backend.direction
        sampler, pruner = self._sampler(), make_pruner(settings.pruner)
        try:
            self.study = optuna.create_study(study_name=settings.study_name, storage=self.storage, sampler=sampler,
                                             pruner=pruner, direction=direction)
            self.created = True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(study_name=settings.study_name, storage=self.storage, sampler=sampler,
                                           pruner=pruner)
        if self.study.direction.name.lower() != direction:
            raise GemmaOcrError(
                f"study {settings.study_name!r} {self.study.direction.name.lower()}s, but backend {backend.name} "
                f"{direction}s {backend.metric}; use another --study-name"
            )
        check_compatible(self.study, settings.search_space, settings.space_source)
        self.meta = {
            "search_mode": settings.search_mode,
            "backend": backend.name,
            "storage": mask(settings.storage),
            "search_space": space_to_dict(settings.search_space),
        }
        self.study.set_user_attr(CONFIG_ATTR, jsonable({
            "search_space": space_to_dict(settings.search_space),
            "fixed": settings.fixed,
            "settings": {"search_mode": settings.search_mode, "backend": settings.backend, "pruner": settings.pruner.to_dict(),
                         "base_output_dir": str(settings.base_output_dir)},
            "metric": backend.metric,
            "updated": now(),
        }))
        self.study.set_user_attr("metric", backend.metric)

    def discard_if_unused(self) -> None:
        """Delete the study again when this run created it and no trial was started in it."""
        if self.created and self.study is not None and not self.study.get_trials(deepcopy=False):
            optuna.delete_study(study_name=self.s.study_name, storage=self.storage)
            log.info("study %s had no trial: removed it again", self.s.study_name)

    # ------------------------------------------------------------------ sampling

    def _sampler(self) -> optuna.samplers.BaseSampler:
        if self.s.search_mode == "bayesian":
            return optuna.samplers.TPESampler(seed=self.s.seed, constant_liar=True)
        # grid points are enqueued as fixed parameters; random mode samples uniformly
        return optuna.samplers.RandomSampler(seed=self.s.seed)

    def _taken_points(self) -> list[bool]:
        """Which grid points are done (complete/pruned) or being run."""
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        trials = [t for t in self.study.get_trials(deepcopy=False, states=live)]
        taken = []
        for point in self.points:
            taken.append(any(_matches(point, {**t.system_attrs.get("fixed_params", {}), **t.params}) for t in trials))
        return taken

    def _any_success(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def remaining_grid(self) -> int:
        return sum(1 for t in self._taken_points() if not t) if self.grid else 0

    def _claim(self) -> Trial | None:
        """Take the next trial, or None when this worker's budget, the grid or the study cap is used up."""
        if self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline):
            return None
        with self.budget_lock:
            if self.left is not None and self.left <= 0:
                return None
            if self.left is not None:
                self.left -= 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(Exception):
                optuna.storages.fail_stale_trials(self.study)
            return self._claim_locked()

    def _claim_locked(self) -> Trial | None:
        with study_lock(self.s.storage, self.s.study_name):
            if self.s.max_total_trials is not None and len(self.study.get_trials(deepcopy=False)) >= self.s.max_total_trials:
                return self._give_back()
            if self.grid is not None:
                free = [p for p, taken in zip(self.points, self._taken_points()) if not taken]
                if not free:
                    return self._give_back()
                self.study.enqueue_trial(free[0], user_attrs={"grid_point": True})
            return self.study.ask()

    def _give_back(self) -> None:
        with self.budget_lock:
            if self.left is not None:
                self.left += 1
        self.stop.set()
        return None

    # ------------------------------------------------------------------ one trial

    def _run_trial(self, trial: Trial) -> None:
        number = trial.number
        trial_dir = self.s.base_output_dir / f"trial_{number}"
        results_path = trial_results_path(self.s.base_output_dir, number)
        doc: dict[str, Any] = {
            "study_name": self.s.study_name, "trial_number": number, "state": "RUNNING", "params": {},
            "metrics": {}, "value": None, "metric": self.backend.metric, "error": None,
            "search_mode": self.s.search_mode, "backend": self.backend.name, "output_dir": str(trial_dir),
            "worker": worker_id(), "started": now(), "finished": None, "duration_s": None,
        }
        started = time.monotonic()
        state, value, interrupted, owned = TrialState.FAIL, None, None, False
        reporter: TrialReporter | None = None
        try:
            check_trial_dirs(self.s.base_output_dir, self.s.study_name, [number])  # another study may have started since
            owned = True
            params = {name: spec.suggest(trial) for name, spec in self.s.search_space.items()}
            doc["params"] = params
            trial_dir.mkdir(parents=True, exist_ok=True)
            write_trial_results(results_path, doc)
            log.info("trial %d: %s", number, json.dumps(jsonable(params), ensure_ascii=False))
            reporter = TrialReporter(trial)
            ctx = TrialContext(self.s.study_name, number, params, dict(self.s.fixed), trial_dir, reporter)
            with _heartbeat(self.study, trial):
                metrics = self.backend.run_trial(ctx)
            doc["metrics"] = metrics = jsonable(metrics)
            value = metrics.get(self.backend.metric) if isinstance(metrics, dict) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise GemmaOcrError(f"the objective {self.backend.metric!r} is missing or not finite in the trial's metrics: {value!r}")
            state = TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state, doc["pruned"] = TrialState.PRUNED, str(e) or "pruned"
            doc["intermediate"] = [list(x) for x in reporter.history] if reporter else []
        except KeyboardInterrupt:
            doc["error"] = interrupted = "interrupted (KeyboardInterrupt)"
        except Exception as e:  # noqa: BLE001 - any failure of one trial is recorded, the study goes on
            doc["error"] = describe_error(e)
            doc["traceback"] = traceback.format_exc(limit=20)
            log.error("trial %d failed: %s", number, doc["error"])
            if isinstance(e, GemmaOcrError) and not self.trials_run and not self._any_success():
                # a configuration error on the very first trial would repeat in every trial: stop here
                self.fatal = GemmaOcrError(f"trial {number} failed and the search stopped (the error would repeat "
                                           f"in every trial; it is recorded as FAIL): {e}")
                self.stop.set()
        finally:
            release_memory()
        doc.update(state=state.name, value=value, finished=now(), duration_s=round(time.monotonic() - started, 3))
        with contextlib.suppress(Exception):
            info = {"output_dir": str(trial_dir), "worker": doc["worker"], "duration_s": doc["duration_s"]}
            if doc["metrics"]:  # the per-step history stays in the results file, out of the database
                info.update({k: v for k, v in doc["metrics"].items() if k != "history"})
            trial.set_user_attr("metrics", info)
            if doc["error"]:
                trial.set_user_attr("error", doc["error"])
        if state == TrialState.COMPLETE:
            self.study.tell(trial, float(value))
        else:
            self.study.tell(trial, state=state)
        if owned:
            write_trial_results(results_path, doc)
        self.trials_run.append(number)
        self._after_trial(number, state, value)
        if interrupted:
            raise KeyboardInterrupt

    def _after_trial(self, number: int, state: TrialState, value: float | None) -> None:
        best = best_trial(self.study)
        if best is not None and best.number == number:
            with contextlib.suppress(GemmaOcrError, OSError):
                self.export(best)
        if self.bar is not None:
            self.bar.update(1)
            if best is not None:
                self.bar.set_postfix({f"best {self.backend.metric}": f"{best.value:.4g}", "trial": best.number})
        shown = f"{value:.6g}" if value is not None else "-"
        log.info("trial %d %s (%s %s)", number, state.name, self.backend.metric, shown)

    def export(self, trial: Any = None) -> tuple[Path, Path] | None:
        best = trial or best_trial(self.study)
        if best is None:
            return None
        config = self.backend.export_config(dict(self.s.fixed), dict(best.params))
        return export_best(self.study, self.s.studies_dir, self.backend.metric, config, self.meta, best)

    # ------------------------------------------------------------------ loop

    def _worker(self) -> None:
        while True:
            trial = self._claim()
            if trial is None:
                return
            self._run_trial(trial)

    def run(self) -> None:
        total = self.s.n_trials
        if self.grid is not None:
            remaining = self.remaining_grid()
            log.info("grid of %d points, %d still to run", grid_size(self.grid), remaining)
            if remaining == 0:
                log.info("every grid point of %s has been run already", self.s.study_name)
            total = remaining if total is None else min(total, remaining)
            self.left = total
        if self.s.progress and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{self.s.study_name} trials", unit="trial", file=sys.stderr)
        try:
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
            if self.bar is not None:
                self.bar.close()


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: Trial) -> Iterator[None]:
    """Record heartbeats while a trial runs, so a worker that dies has its trial failed, not stuck RUNNING."""
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
    except ImportError:  # pragma: no cover - private helper moved
        yield
        return
    if not is_heartbeat_enabled(study._storage):
        yield
        return
    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def describe_error(e: BaseException) -> str:
    """One line naming the failure; out-of-memory errors are labelled as such."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    kind = type(e).__name__
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower() or kind == "OutOfMemoryError":
        return f"out of memory ({kind}): {text}"
    return f"{kind}: {text}" if text else kind


def release_memory() -> None:
    """Free what the last trial held: Python garbage and the CUDA cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_search(settings: SearchSettings, backend: Backend | None = None) -> SearchSummary:
    """Run this worker's share of the study described by ``settings``; export the best configuration."""
    backend = backend or get_backend(settings.backend)
    backend.validate(settings.fixed, settings.search_space, settings.source)
    search = _Search(settings, backend)  # refuses a grid of continuous ranges; creates nothing yet
    check_trial_dirs(settings.base_output_dir, settings.study_name)
    log.info(
        "study %s (%s, %s backend) in %s", settings.study_name, settings.search_mode, backend.name, mask(settings.storage)
    )
    try:
        search.open()
        try:
            search.run()
        finally:
            exported = None
            with contextlib.suppress(GemmaOcrError, OSError):
                exported = search.export()
    except BaseException:
        with contextlib.suppress(Exception):
            search.discard_if_unused()
        raise
    if search.fatal is not None:
        raise search.fatal
    best = best_trial(search.study)
    return SearchSummary(
        study_name=settings.study_name,
        storage=mask(settings.storage),
        trials_run=sorted(search.trials_run),
        counts=trial_counts(search.study),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_params_path=exported[0] if exported else None,
        best_config_path=exported[1] if exported else None,
        metric=backend.metric,
    )
