"""The search configuration file: search space, study settings and fixed training parameters.

JSON (the suite's format) or YAML (``.yaml``/``.yml``)::

    {"search_space": {...},                       # see gemma_ocr.search.space
     "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 10},   # optional
     "n_trials": 20, "n_jobs": 1, "timeout": null, "study_name": ..., "storage": ..., "search_mode": ...,
     "sampler_seed": 1, "heartbeat_interval": 15, "grace_period": 180, "storage_retry_timeout": 120,
     "train_split": "train[:90%]", "load_in_4bit": true, "seed": 42, ...}   # everything else: fixed parameters

Study settings in the file are defaults; command-line flags override them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import read_json, read_yaml
from gemma_ocr.search.space import ParamSpec, parse_search_space

log = logging.getLogger(__name__)

SEARCH_MODES = ("bayesian", "random", "grid")
#: The seed's default space: learning rate on a log scale, a few epochs.
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 5e-4},
    "num_train_epochs": {"type": "int", "low": 2, "high": 5, "step": 1},
}
#: Where a built-in search space comes from, for messages (it is no file's search_space).
BUILTIN_SPACE = "built-in default search_space"
#: Top-level keys of a config file that configure the study rather than the training.
SETTING_KEYS = {
    "study_name": str,
    "search_mode": str,
    "n_trials": int,
    "n_jobs": int,
    "timeout": (int, float),
    "storage": str,
    "sampler_seed": int,  # "seed" is the training seed, a fixed parameter like any other
    "heartbeat_interval": int,
    "grace_period": int,
    "storage_retry_timeout": (int, float),
    "backend": str,
    "base_output_dir": str,
    "pruner": dict,
}
PRUNER_KEYS = {"type": str, "n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int}


@dataclass
class PrunerSettings:
    """MedianPruner settings (the seed's defaults: 5 startup trials, 10 warm-up steps)."""

    type: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 10
    interval_steps: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchFile:
    """A parsed search configuration."""

    search_space: dict[str, ParamSpec]
    fixed: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"
    space_source: str = BUILTIN_SPACE  # where the search space is defined


def parse_pruner(value: Any, where: str) -> PrunerSettings:
    """Validate a ``pruner`` object."""
    if value is None:
        return PrunerSettings()
    if not isinstance(value, dict):
        raise GemmaOcrError(f"{where}.pruner: expected an object like {{\"type\": \"median\", \"n_startup_trials\": 5}}")
    for key, v in value.items():
        if key not in PRUNER_KEYS:
            raise GemmaOcrError(f"{where}.pruner: unknown key {key!r} (allowed: {sorted(PRUNER_KEYS)})")
        if not isinstance(v, PRUNER_KEYS[key]) or isinstance(v, bool):
            raise GemmaOcrError(f"{where}.pruner.{key}: expected {PRUNER_KEYS[key].__name__}, got {v!r}")
    out = PrunerSettings(**value)
    if out.type not in ("median", "none"):
        raise GemmaOcrError(f"{where}.pruner.type: expected \"median\" or \"none\", got {out.type!r}")
    return out


def parse_search_config(data: Any, source: str) -> SearchFile:
    """Split a loaded config document into search space, study settings and fixed parameters."""
    if not isinstance(data, dict):
        raise GemmaOcrError(f"{source}: expected a JSON object with a \"search_space\" and fixed parameters")
    data = dict(data)
    explicit = "search_space" in data
    if explicit:
        space_source = f"{source}: search_space"
        space = parse_search_space(data.pop("search_space"), space_source)
    else:  # a plain training config: its values of the searched parameters give way to the search
        log.info("%s has no search_space; using the default one (%s)", source, ", ".join(DEFAULT_SEARCH_SPACE))
        space_source = f"{BUILTIN_SPACE} ({source} has none; give --config a file with one)"
        space = parse_search_space(DEFAULT_SEARCH_SPACE, space_source)
        data = {k: v for k, v in data.items() if k not in space}
    settings: dict[str, Any] = {}
    for key, kind in SETTING_KEYS.items():
        if key in data:
            value = data.pop(key)
            if value is None:
                continue
            if not isinstance(value, kind) or isinstance(value, bool):
                raise GemmaOcrError(f"{source}: {key} has the wrong type ({value!r})")
            settings[key] = value
    if "search_mode" in settings and settings["search_mode"] not in SEARCH_MODES:
        raise GemmaOcrError(f"{source}: search_mode must be one of {', '.join(SEARCH_MODES)}, got {settings['search_mode']!r}")
    settings["pruner"] = parse_pruner(settings.get("pruner"), source)
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}  # "_comment" keys
    both = sorted(set(space) & set(data))
    if both:
        raise GemmaOcrError(
            f"{source}: {', '.join(both)} is both a fixed parameter and in search_space; remove it from one of them"
        )
    return SearchFile(search_space=space, fixed=data, settings=settings, source=source, space_source=space_source)


def load_search_config(path: str | os.PathLike[str] | None) -> SearchFile:
    """Load a JSON or YAML search configuration; ``None`` gives the default search space."""
    if path is None:
        return parse_search_config({"search_space": DEFAULT_SEARCH_SPACE}, "<default search space>")
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        data = read_yaml(path, "search config")
    else:
        data = read_json(path, "search config")
    return parse_search_config(data, str(path))
