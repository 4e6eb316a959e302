"""Search spaces: parsing the JSON/YAML description, suggesting values, and grids.

Accepted parameter descriptions (``search_space: {name: spec}``)::

    {"type": "loguniform", "low": 1e-5, "high": 5e-4}          # float on a log scale
    {"type": "uniform", "low": 0.0, "high": 0.15}              # float on a linear scale
    {"type": "float", "low": 1e-5, "high": 1e-2, "log": true}  # YAML style; "step" allowed when not log
    {"type": "int", "low": 2, "high": 5, "step": 1}            # "log": true allowed when step is 1
    {"type": "categorical", "choices": [8, 16, 32, 64]}        # "type" may be left out with "choices"

Any continuous parameter may list ``"grid"`` (or ``"values"``): the values grid search tries.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.settings import INT_RANGE

FLOAT, INT, CATEGORICAL = "float", "int", "categorical"
TYPE_ALIASES = {
    "loguniform": (FLOAT, True),
    "log_uniform": (FLOAT, True),
    "uniform": (FLOAT, False),
    "float": (FLOAT, None),
    "discrete_uniform": (FLOAT, False),
    "int": (INT, None),
    "integer": (INT, None),
    "categorical": (CATEGORICAL, None),
}
KNOWN_KEYS = {"type", "low", "high", "step", "q", "log", "choices", "grid", "values"}
MAX_GRID_POINTS = 100_000


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a float/int range or a list of choices, plus optional grid values."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] | None = field(default=None)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution this parameter is sampled from."""
        if self.kind == FLOAT:
            return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)
        if self.kind == INT:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return CategoricalDistribution(list(self.choices))

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Ask ``trial`` for a value of this parameter."""
        if self.kind == FLOAT:
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)
        if self.kind == INT:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid_values(self, where: str = "search_space") -> list[Any]:
        """The values grid search tries; a continuous range without listed values is refused."""
        if self.grid is not None:
            return list(self.grid)
        if self.kind == CATEGORICAL:
            return list(self.choices)
        if self.kind == INT:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        raise GemmaOcrError(
            f"{where}.{self.name}: grid search needs discrete values, but {self.describe()} is continuous; "
            f'list the values to try, e.g. "grid": [{_fmt(self.low)}, {_fmt(self.high)}], give it a "step", '
            "or use --search-mode bayesian/random"
        )

    def representative(self) -> Any:
        """A value inside the space (used to validate a configuration before any trial runs)."""
        if self.kind == CATEGORICAL:
            return self.choices[0]
        if self.grid:
            return self.grid[0]
        return int(self.low) if self.kind == INT else float(self.low)

    def probe_values(self) -> list[Any]:
        """The values that check this parameter up front: every choice, both ends of a range, every grid value."""
        if self.kind == CATEGORICAL:
            return list(self.choices)
        values = [int(v) if self.kind == INT else float(v) for v in (self.low, self.high, *(self.grid or ()))]
        return list(dict.fromkeys(values))

    def describe(self) -> str:
        """Short human form, e.g. ``loguniform(1e-05, 0.0005)``."""
        if self.kind == CATEGORICAL:
            return f"categorical({list(self.choices)})"
        name = "loguniform" if self.kind == FLOAT and self.log else ("uniform" if self.kind == FLOAT else "int")
        extra = ""
        if self.step is not None and not (self.kind == INT and self.step == 1):
            extra = f", step={_fmt(self.step)}"
        if self.kind == INT and self.log:
            extra += ", log"
        return f"{name}({_fmt(self.low)}, {_fmt(self.high)}{extra})"

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (stored with the study so ``--resume`` can reuse it)."""
        if self.kind == CATEGORICAL:
            out: dict[str, Any] = {"type": CATEGORICAL, "choices": list(self.choices)}
        else:
            out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
            if self.step is not None:
                out["step"] = self.step
        if self.grid is not None:
            out["grid"] = list(self.grid)
        return out


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


def parse_param(name: str, spec: Any, where: str = "search_space") -> ParamSpec:
    """Validate one parameter description and return its :class:`ParamSpec`."""
    at = f"{where}.{name}"
    if not isinstance(spec, dict):
        raise GemmaOcrError(f"{at}: expected an object such as {{\"type\": \"uniform\", \"low\": 0, \"high\": 1}}, got {spec!r}")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        raise GemmaOcrError(f"{at}: unknown key(s) {unknown} (allowed: {sorted(KNOWN_KEYS)})")
    type_name = spec.get("type")
    if type_name is None:
        if "choices" in spec or ("values" in spec and "low" not in spec):
            type_name = "categorical"
        else:
            raise GemmaOcrError(f'{at}: missing "type" (one of {", ".join(TYPE_ALIASES)})')
    if not isinstance(type_name, str) or type_name.lower() not in TYPE_ALIASES:
        raise GemmaOcrError(f"{at}: unknown type {type_name!r} (use one of {', '.join(TYPE_ALIASES)})")
    kind, forced_log = TYPE_ALIASES[type_name.lower()]

    if kind == CATEGORICAL:
        choices = spec.get("choices", spec.get("values"))
        if not isinstance(choices, list) or not choices:
            raise GemmaOcrError(f'{at}: categorical needs a non-empty "choices" list')
        bad = [c for c in choices if not _is_scalar(c)]
        if bad:
            raise GemmaOcrError(f"{at}: choices must be strings, numbers, booleans or null, got {bad[0]!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise GemmaOcrError(f"{at}: choices contain duplicates: {choices}")
        return ParamSpec(name, CATEGORICAL, choices=tuple(choices))

    for key in ("low", "high"):
        if key not in spec:
            raise GemmaOcrError(f'{at}: {type_name} needs "low" and "high"')
        if not _is_number(spec[key]):
            raise GemmaOcrError(f"{at}.{key}: expected a number, got {spec[key]!r}")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise GemmaOcrError(f"{at}: low ({low}) is greater than high ({high})")
    log = bool(forced_log) if forced_log is not None else spec.get("log", False)
    if not isinstance(log, bool):
        raise GemmaOcrError(f"{at}.log: expected true or false, got {log!r}")
    if forced_log is True and "log" in spec and spec["log"] is False:
        raise GemmaOcrError(f'{at}: type loguniform contradicts "log": false (use type uniform)')
    step = spec.get("step", spec.get("q"))
    if step is not None and (not _is_number(step) or step <= 0):
        raise GemmaOcrError(f"{at}.step: expected a positive number, got {step!r}")
    if log and low <= 0:
        raise GemmaOcrError(f"{at}: a log-scale range needs low > 0, got low={low}")

    if kind == INT:
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not INT_RANGE[0] <= int(value) <= INT_RANGE[1]:
                raise GemmaOcrError(f"{at}.{key}: int parameters must fit in 64 bits (from {INT_RANGE[0]} to "
                                    f"{INT_RANGE[1]}), got {value!r}")
            if value is not None and float(value) != int(value):
                raise GemmaOcrError(f"{at}.{key}: int parameters need whole numbers, got {value!r}")
        low, high, step = int(low), int(high), int(step) if step is not None else 1
        if log and step != 1:
            raise GemmaOcrError(f'{at}: "log": true cannot be combined with a step other than 1')
    else:
        low, high = float(low), float(high)
        if step is not None:
            if log:
                raise GemmaOcrError(f'{at}: "log": true cannot be combined with "step"')
            step = float(step)

    grid = spec.get("grid", spec.get("values"))
    if grid is not None:
        if not isinstance(grid, list) or not grid:
            raise GemmaOcrError(f'{at}.grid: expected a non-empty list of values inside [{low}, {high}]')
        for value in grid:
            if not _is_number(value) or not (low <= value <= high):
                raise GemmaOcrError(f"{at}.grid: value {value!r} is not a number inside [{low}, {high}]")
            if kind == INT and float(value) != int(value):
                raise GemmaOcrError(f"{at}.grid: int parameters need whole numbers, got {value!r}")
        grid = tuple(int(v) if kind == INT else float(v) for v in grid)
    return ParamSpec(name, kind, low=low, high=high, step=step, log=log, grid=grid)


def parse_search_space(space: Any, where: str = "search_space") -> dict[str, ParamSpec]:
    """Validate a whole ``search_space`` mapping (name -> description)."""
    if not isinstance(space, dict) or not space:
        raise GemmaOcrError(f"{where}: expected a non-empty object mapping parameter names to descriptions")
    out = {}
    for name, spec in space.items():
        if not isinstance(name, str) or not name:
            raise GemmaOcrError(f"{where}: parameter names must be non-empty strings, got {name!r}")
        out[name] = parse_param(name, spec, where)
    return out


def probe_points(space: dict[str, ParamSpec], where: str = "search_space") -> Iterator[tuple[str | None, dict[str, Any]]]:
    """``(label, values)`` pairs that validate a whole space before any trial runs: the representative
    point (label None), then each parameter's every probe value, labelled, with the others representative."""
    base = {name: spec.representative() for name, spec in space.items()}
    yield None, base
    for name, spec in space.items():
        for value in spec.probe_values():
            if repr(value) != repr(base[name]):
                yield f"{where}.{name} = {value!r}", {**base, name: value}


def space_to_dict(space: dict[str, ParamSpec]) -> dict[str, dict[str, Any]]:
    """Canonical JSON form of a parsed space."""
    return {name: spec.to_dict() for name, spec in space.items()}


def suggest_all(trial: optuna.trial.BaseTrial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample every parameter of ``space`` for ``trial``."""
    return {name: spec.suggest(trial) for name, spec in space.items()}


def build_grid(space: dict[str, ParamSpec], where: str = "search_space") -> dict[str, list[Any]]:
    """name -> values for grid search; refuses continuous ranges without listed values."""
    grid = {name: spec.grid_values(where) for name, spec in space.items()}
    size = grid_size(grid)
    if size > MAX_GRID_POINTS:
        raise GemmaOcrError(f"{where}: the grid has {size} points (more than {MAX_GRID_POINTS}); use fewer values")
    return grid


def grid_size(grid: dict[str, list[Any]]) -> int:
    """How many points a grid has."""
    return math.prod(len(v) for v in grid.values())


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of a grid, as name -> value dicts."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
