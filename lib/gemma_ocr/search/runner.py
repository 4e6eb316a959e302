"""Running a search: resolve settings, open/resume the study, let workers run trials, export the best.

Each trial runs through ``study.optimize`` (one trial per call), so Optuna records its heartbeats,
fails the trials of dead workers before asking for a new one and tells the result. Two guarantees
need more than Optuna's loop, and get one small piece each:

* a study-wide budget (``max_total_trials``, a grid) that racing workers never overrun: a worker
  claims its trial under :func:`~gemma_ocr.search.storage.study_lock`, held from the count until the
  trial exists (``MaxTrialsCallback`` only stops a worker after a trial, once the cap is overrun):
  :mod:`gemma_ocr.search.claims`;
* journal files, which have no heartbeats in Optuna: :mod:`gemma_ocr.search.liveness`.

So several threads (``n_jobs``), processes and machines share one study: trial numbers never
collide, a grid point is run once, the cap holds, and a dead worker's trial is failed after the
grace period and run again, by a worker still running or by the next ``--resume``.

The pieces: :mod:`~gemma_ocr.search.study_setup` opens the study, :mod:`~gemma_ocr.search.worker` runs the
worker loop, :mod:`~gemma_ocr.search.trial_objective` one trial, :mod:`~gemma_ocr.search.trial_progress` what
follows it (results file, best configuration, progress bar); this module resolves the settings and runs them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import check_writable
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.search.backends import DEFAULT_SPACES, Backend, get_backend, objective_metrics, use_objective
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
from gemma_ocr.search.export import best_trial, check_trial_dirs, pareto_front, trial_counts
from gemma_ocr.search.space import parse_search_space
from gemma_ocr.search.storage import (
    STORAGE_ERRORS,
    default_storage,
    existing_storage,
    first_line,
    mask,
    normalize_url,
    retrying,
    study_exists,
)
from gemma_ocr.search.study_setup import CONFIG_ATTR
from gemma_ocr.search.worker import SearchWorker
from gemma_ocr.settings import Layer, resolve

log = logging.getLogger(__name__)


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


def run_search(settings: SearchSettings, backend: Backend | None = None,
               callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> SearchSummary:
    """Run this worker's share of the study described by ``settings``; export the best configuration.

    ``callbacks``: called as Optuna's ``study.optimize`` callbacks are, ``(study, trial)``, after each trial this
    worker finishes (e.g. the main job's progress line)."""
    backend = use_objective(backend or get_backend(settings.backend), settings.objective)
    backend.validate(settings.fixed, settings.search_space, settings.source)
    search = SearchWorker(settings, backend, callbacks)  # refuses a grid of continuous ranges; creates nothing yet
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
        retrying(search.state.opened.open, f"opening study {settings.study_name}")
        try:
            search.run()
        finally:
            exported = search.export()
    except BaseException:
        try:
            search.state.opened.discard_if_unused()
        except (*STORAGE_ERRORS, OSError) as e:
            log.warning("could not check whether study %s is still empty: %s", settings.study_name, first_line(e))
        raise
    state = search.state
    if state.fatal is not None:
        raise state.fatal
    best = best_trial(state.study)
    return SearchSummary(
        study_name=settings.study_name,
        storage=mask(settings.storage),
        trials_run=sorted(state.trials_run),
        counts=trial_counts(state.study),
        best_value=best.values[0] if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_params_path=exported[0] if exported else None,
        best_config_path=exported[1] if exported else None,
        metric=backend.metric,
        pareto_front=pareto_front(state.study, objective_metrics(backend)),
    )
