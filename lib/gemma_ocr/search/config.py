"""The search's settings and its configuration file, read through the configuration layer (:mod:`gemma_ocr.settings`).

:class:`SearchArguments` holds every setting of a study: its field names are the study keys of a search
config file and of the definition stored with a study, and, with ``-``, the flags of
``core/hyperparameter_search.py``. A search config file is JSON (the suite's format) or YAML
(``.yaml``/``.yml``)::

    {"search_space": {...},                                   # see gemma_ocr.search.space
     "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 10},   # or "pruner": "none"
     "n_trials": 20, "n_jobs": 1, "timeout": null, "study_name": ..., "storage": ..., ...  # SearchArguments fields
     "train_split": "train[:90%]", "load_in_4bit": true, "seed": 42, ...}   # everything else: fixed parameters

Precedence: defaults < the definition stored with the study (``--resume``) < config file < flags
(:func:`gemma_ocr.search.runner.resolve_settings`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gemma_ocr.training.config import MAX_SEED, arg
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.search.space import CATEGORICAL, ParamSpec, parse_search_space
from gemma_ocr.layout import LAYOUT
from gemma_ocr.modeling.families import GEMMA4, family_of
from gemma_ocr.search.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, STORAGE_RETRY_S
from gemma_ocr.config_files import read_config_file
from gemma_ocr.settings import FieldError, Layer, Settings, unknown_key

log = logging.getLogger(__name__)

DEFAULT_N_TRIALS = 20
#: The built-in space, made for the default model (the shipped tiny reader, LoRA from default.json): how fast
#: the adapters learn, and whether the vision tower gets adapters too. A real Gemma 3 wants its own space
#: (configs/hyperparm_configs/optuna/config.json: learning rate 1e-5..5e-4, epochs, rank, warm-up).
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
    "finetune_vision_layers": {"type": "categorical", "choices": [True, False]},
}
#: The image-token budget, searchable as a categorical dimension (Gemma 4: 70, 140, 280, 560, 1120).
BUDGET = "image_token_budget"
#: Where a built-in search space comes from, for messages (it is no file's search_space).
BUILTIN_SPACE = "built-in default search_space"
study = functools.partial(arg, group="search settings (also keys of the --config file)")
training = functools.partial(arg, group="training parameters (they replace the --config file's in every trial)")


@dataclass
class SearchArguments(Settings):
    """Every setting of a study: a key of a search config file and a flag."""

    study_name: str | None = study(None, "name of the Optuna study (null: hpsearch-<timestamp>)")
    search_mode: Literal["bayesian", "random", "grid"] = study("bayesian", "bayesian (TPE), random, or grid")
    n_trials: int | None = study(None, f"trials this process runs (null: {DEFAULT_N_TRIALS}; grid: the rest of the grid)")
    max_total_trials: int | None = study(None, "study-wide cap over all workers: no worker starts a trial once the "
                                               "study has this many")
    timeout: float | None = study(None, "start no new trial after this many seconds")
    n_jobs: int = study(1, "trials run in parallel by this process (each gemma trial then trains in a process of its own)")
    backend: str = study("gemma", "what a trial trains: gemma, khmer-cnn, or package.module:attribute")
    objective: str | None = study(None, "what the search optimises (gemma: eval_loss, the validation loss; cer or f1 "
                                        "of greedy answers on the validation slice, what OCR users measure (cer is "
                                        "recommended); normalized_cer, normalized_f1; two joined by a comma, e.g. "
                                        "cer,train_seconds: a two-objective study and its Pareto front). null: the "
                                        "backend's own (gemma eval_loss, khmer-cnn char_accuracy)")
    sampler_seed: int | None = study(None, "Optuna sampler seed (null: unseeded); a resumed study and each further "
                                           "worker derive their own from it")
    storage: str | None = study(None, "Optuna storage: sqlite:///PATH.db (null: <studies_dir>/<study>.db), "
                                      "postgresql://user:pass@host/db, or journal:PATH")
    resume: bool = study(False, "continue the study of this name (its stored search space unless --config is given); "
                                "creates it when missing, so every worker of a shared study passes --resume")
    base_output_dir: Path = study(LAYOUT.search_trials, "per-trial folders go here, one study per folder")
    studies_dir: Path = study(LAYOUT.studies, "default SQLite databases and the best params/config files go here")
    pruner: Literal["median", "none"] = study("median", "median: stop trials whose evaluations trail the others; none")
    pruner_n_startup_trials: int = study(5, "trials completed before pruning starts", aliases=["--pruner-startup-trials"])
    pruner_n_warmup_steps: int = study(10, "training steps of a trial before it can be pruned",
                                       aliases=["--pruner-warmup-steps"])
    pruner_interval_steps: int = study(1, "steps between two pruning checks of a trial")
    heartbeat_interval: int = study(HEARTBEAT_INTERVAL_S, "seconds between the heartbeats of a running trial")
    grace_period: int = study(GRACE_PERIOD_S, "seconds without a heartbeat after which a trial is a dead worker's: "
                                              "failed and run again")
    storage_retry_timeout: float = study(STORAGE_RETRY_S, "seconds a worker waits out an unreachable database server")
    progress: bool = study(True, "a progress bar of the trials (--no-progress: none)")

    def validate(self) -> None:
        """Types, then ranges; raise :class:`FieldError` on the first bad field."""
        super().validate()
        self.at_least(1, "n_trials", "max_total_trials", "n_jobs", "heartbeat_interval", "pruner_interval_steps")
        self.at_least(0, "pruner_n_startup_trials", "pruner_n_warmup_steps", "storage_retry_timeout")
        if self.timeout is not None and self.timeout <= 0:
            raise FieldError("timeout", f"must be positive seconds, got {self.timeout}")
        self.at_least(0, "sampler_seed", most=MAX_SEED)
        if self.grace_period <= self.heartbeat_interval:
            raise FieldError("grace_period", f"must be above heartbeat_interval ({self.heartbeat_interval} s), "
                                             f"got {self.grace_period}")


@dataclass
class FixedOverrides:
    """Training parameters given as flags: they replace the config file's fixed parameters in every trial."""

    model_name: str | None = training(None, "base model folder or hub id")
    input_data: str | None = training(None, "training data JSON")
    instruction: str | None = training(None, "OCR instruction text")
    seed: int | None = training(None, 'training seed (the config\'s "seed")')


@dataclass
class SearchSettings(SearchArguments):
    """A resolved search: its settings, search space and fixed training parameters."""

    search_space: dict[str, ParamSpec] = field(default_factory=lambda: parse_search_space(DEFAULT_SEARCH_SPACE))
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "<default search space>"  # where the fixed parameters come from, for messages
    space_source: str = "search_space"  # where the search space comes from


#: Top-level keys of a config file (and of a stored definition) that configure the study rather than the training.
SETTING_KEYS = tuple(SearchArguments.field_names())
#: The keys of a ``pruner`` object: "type" is the ``pruner`` setting, the others the ``pruner_*`` ones.
PRUNER_KEYS = ("type", *(k.removeprefix("pruner_") for k in SETTING_KEYS if k.startswith("pruner_")))


@dataclass
class SearchFile:
    """A search definition: a config file's, the one stored with a study, or a backend's built-in space."""

    search_space: dict[str, ParamSpec]
    fixed: dict[str, Any] = field(default_factory=dict)
    settings: Layer = field(default_factory=lambda: Layer("<defaults>", {}))  # its study settings
    source: str = "<defaults>"
    space_source: str = BUILTIN_SPACE  # where the search space is defined


def study_layer(source: str, values: Mapping[str, Any]) -> Layer:
    """The study settings of a file or stored definition as a layer; a ``pruner`` object gives the pruner_* keys."""
    values, names = dict(values), {}
    if isinstance(values.get("pruner"), Mapping):
        for key, value in values.pop("pruner").items():
            if key not in PRUNER_KEYS:
                raise unknown_key(f"{source}: pruner", key, PRUNER_KEYS)
            flat = "pruner" if key == "type" else f"pruner_{key}"
            values[flat], names[flat] = value, f"{source}: field 'pruner.{key}'"
    return Layer(source, values, names)


def parse_search_config(data: Any, source: str) -> SearchFile:
    """Split a loaded config document into search space, study settings and fixed parameters."""
    if not isinstance(data, dict):
        raise GemmaOcrError(f"{source}: expected a JSON object with a \"search_space\" and fixed parameters")
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}  # "_comment" keys
    if "search_space" in data:
        space_source = f"{source}: search_space"
        space = parse_search_space(data.pop("search_space"), space_source)
    else:  # a plain training config: its values of the searched parameters give way to the search
        log.info("%s has no search_space; using the default one (%s)", source, ", ".join(DEFAULT_SEARCH_SPACE))
        space_source = f"{BUILTIN_SPACE} ({source} has none; give --config a file with one)"
        space = parse_search_space(DEFAULT_SEARCH_SPACE, space_source)
        data = {k: v for k, v in data.items() if k not in space}
    settings = study_layer(source, {k: data.pop(k) for k in list(data) if k in SETTING_KEYS})
    both = sorted(set(space) & set(data))
    if both:
        raise GemmaOcrError(
            f"{source}: {', '.join(both)} is both a fixed parameter and in search_space; remove it from one of them"
        )
    check_budget_dimension(space, data, space_source)
    return SearchFile(search_space=space, fixed=data, settings=settings, source=source, space_source=space_source)


def check_budget_dimension(space: dict[str, ParamSpec], fixed: Mapping[str, Any], where: str) -> None:
    """One line for a searched ``image_token_budget`` value the model's family does not take (the family of a
    fixed ``model_name`` folder or hub id, else Gemma 4's 70, 140, 280, 560 and 1120)."""
    spec = space.get(BUDGET)
    if spec is None:
        return
    if spec.kind != CATEGORICAL:
        raise GemmaOcrError(f"{where}.{BUDGET}: {spec.describe()} would try budgets no model takes; search it as "
                            f'{{"type": "categorical", "choices": [{", ".join(map(str, GEMMA4.budget_values))}]}}')
    family = family_of(str(fixed["model_name"])) if fixed.get("model_name") else GEMMA4
    for value in spec.choices:
        try:
            family.budget_kwargs(value if isinstance(value, int) and not isinstance(value, bool) else repr(value))
        except GemmaOcrError as e:
            raise GemmaOcrError(f"{where}.{BUDGET}: {e}") from None


def load_search_config(path: str | os.PathLike[str]) -> SearchFile:
    """Load a JSON or YAML search configuration."""
    return parse_search_config(read_config_file(path, "search config"), str(path))
