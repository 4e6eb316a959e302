"""The one configuration layer: settings dataclasses filled from defaults < a JSON/YAML file < flags.

A settings class is a dataclass: its field names are the config keys (``learning_rate``) and the flags
(``--learning-rate``, ``--learning_rate``); help text is in ``metadata["help"]``, more flag spellings in
``metadata["aliases"]`` (the convention of transformers' ``TrainingArguments``). This module holds the values:
:func:`coerce` (the one value check, for file values and flag text alike), :func:`resolve` (defaults < each
:class:`Layer`: a file, a stored definition, the command line), :class:`Settings` (the methods of a settings
dataclass) and the one-line errors naming the key and the closest valid name (:func:`did_you_mean`,
:func:`unknown_key`, :class:`FieldError`). Every error a user can cause is one
:class:`~gemma_ocr.errors.GemmaOcrError` line.

The configuration files (JSON or YAML, a key given twice refused) are read by :mod:`gemma_ocr.config_files`;
the flags (``--config FILE`` and a flag per field, made by transformers' ``HfArgumentParser``) are
:mod:`gemma_ocr.flags`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import enum
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from gemma_ocr.errors import GemmaOcrError

NULL_WORDS = frozenset({"none", "null"})
INT_RANGE = (-(2**63), 2**63 - 1)  # what an integer setting can hold: a 64-bit integer, as torch and NumPy take it
TRUE_WORDS = frozenset({"true", "yes", "on", "1", "t", "y"})
FALSE_WORDS = frozenset({"false", "no", "off", "0", "f", "n"})
COMMAND_LINE = "command line"


class FieldError(GemmaOcrError):
    """A value a settings class refuses; :func:`resolve` names the file or flag it came from."""

    def __init__(self, name: str, why: str):
        super().__init__(f"config: field {name!r} {why}")
        self.name, self.why = name, why


class Mismatch(ValueError):
    """A value that does not fit a type; ``str()`` is the reason (``must be an integer, got 'x'``)."""


# -------------------------------------------------------------------- names


def did_you_mean(name: str, known: Sequence[str], quote: bool = True) -> str:
    """``"; did you mean 'learning_rate'?"`` for the closest of ``known``, or ``""``."""
    bare = str(name).lstrip("-")
    started = [k for k in known if len(bare) >= 4 and k.lstrip("-").startswith(bare)]  # adamw: adamw_torch
    close = started[:1] or difflib.get_close_matches(str(name), list(known), n=5, cutoff=0.7)
    if not close:
        return ""
    best = max(close, key=lambda k: len(os.path.commonprefix([k, str(name)])))  # lora_rank: lora_r, not local_rank
    return f"; did you mean {best!r}?" if quote else f"; did you mean {best}?"


def unknown_key(source: str, key: Any, known: Sequence[str], what: str = "key",
                error: type[GemmaOcrError] = GemmaOcrError) -> GemmaOcrError:
    """The one-line error (of type ``error``) for a key that none of ``known`` is, naming the closest."""
    hint = did_you_mean(key, known)
    if not hint:
        hint = f" (known: {', '.join(known)})" if len(known) <= 12 else " (see --help for the valid names)"
    return error(f"{source}: unknown {what} {key!r}{hint}")


# -------------------------------------------------------------------- values


def union_members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def is_sequence(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return origin in (list, tuple, collections.abc.Sequence)


def _is_mapping(tp: Any) -> bool:
    return (typing.get_origin(tp) or tp) in (dict, collections.abc.Mapping)


def type_name(tp: Any) -> str:
    """How an error line names a type: ``an integer``, ``a list of strings``, ``true or false or null``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(a) for a in union_members(tp)))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    if is_enum(tp):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if is_sequence(tp):
        args = typing.get_args(tp)
        item = type_name(args[0]) if args else "values"
        return "a list of " + {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(item, item)
    if _is_mapping(tp):
        return "a JSON object"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             Path: "a path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _choice(value: Any, choices: Sequence[Any]) -> Any:
    for c in choices:
        if value == c and type(value) is type(c) or (isinstance(value, str) and str(c) == value):
            return c
        if isinstance(c, bool) and isinstance(value, str) and value.strip().lower() in (TRUE_WORDS if c else FALSE_WORDS):
            return c
    if isinstance(value, enum.Enum) and value.value in choices:
        return value.value
    shown = [str(c) for c in choices]
    raise Mismatch(f"must be one of {', '.join(shown)}, got {value!r}{did_you_mean(str(value), shown)}")


def _json(text: str, tp: Any) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Mismatch(f"must be {type_name(tp)} (JSON text: {e.msg} at column {e.colno}), got {text!r}") from None


def coerce(value: Any, tp: Any) -> Any:
    """``value`` checked against the type hint ``tp``, converted where text or JSON leaves it ambiguous.

    Text (a flag, or a string in a file) becomes what it spells: ``"true"``/``"false"`` a bool,
    ``"none"``/``"null"`` None where the type allows None, ``"2e-4"`` a number, ``"a,b"`` or ``'["a"]'``
    a list, ``'{"k": 1}'`` a JSON object, non-empty text a ``Path`` where the type is one. An integral float
    is an int where the type is int; NaN and infinities are refused, and so are integers beyond 64 bits
    (:data:`INT_RANGE`). Raises :class:`Mismatch` with the reason.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp)
    if origin is Literal:
        return _choice(value, typing.get_args(tp))
    if is_enum(tp):
        return _choice(value, [m.value for m in tp])
    text = value.strip() if isinstance(value, str) else None
    got = f", got {value!r}"
    if tp is type(None):
        if value is None or (text is not None and text.lower() in NULL_WORDS):
            return None
        raise Mismatch("must be null" + got)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in TRUE_WORDS | FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise Mismatch("must be true or false" + got)
    if tp in (int, float):
        return _coerce_number(value, text, tp, got)
    if tp is str:
        if isinstance(value, str):
            return value
        raise Mismatch("must be a string" + got)
    if tp is Path:
        if isinstance(value, (str, os.PathLike)) and str(value).strip():
            return Path(value)
        raise Mismatch("must be a path" + got)
    if is_sequence(tp):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        if text is not None:
            value = _json(text, tp) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise Mismatch(f"must be {type_name(tp)}{got}")
        items = []
        for i, v in enumerate(value):
            try:
                items.append(coerce(v, item))
            except Mismatch as e:
                raise Mismatch(f"item {i + 1} {e}") from None
        return tuple(items) if (origin or tp) is tuple else items
    if _is_mapping(tp):
        if text is not None and text.startswith("{"):
            value = _json(text, tp)
        if not isinstance(value, dict):
            raise Mismatch(f"must be a JSON object{got}")
        return value
    if isinstance(origin or tp, type):
        if isinstance(value, origin or tp):
            return value
        raise Mismatch(f"must be {type_name(tp)} (set it from Python){got}")
    return value


def _coerce_number(value: Any, text: str | None, tp: type, got: str) -> int | float:
    """:func:`coerce` for ``int`` or ``float``: ``text`` is the value's stripped text (None: not text); ``got``
    ends an error line."""
    number: Any = value
    if text is not None:
        try:
            number = int(text) if tp is int and re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise Mismatch(f"must be {type_name(tp)}{got}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise Mismatch(f"must be {type_name(tp)}{got}")
    if not math.isfinite(number):
        raise Mismatch(f"must be a finite number{got}")
    if tp is float:
        return float(number)
    if isinstance(number, float) and not number.is_integer():
        raise Mismatch(f"must be an integer{got}")
    if not INT_RANGE[0] <= int(number) <= INT_RANGE[1]:
        raise Mismatch(f"must be an integer that fits in 64 bits (from {INT_RANGE[0]} to {INT_RANGE[1]}){got}")
    return int(number)


def _coerce_union(value: Any, tp: Any) -> Any:
    members = list(union_members(tp))
    if type(None) in members and (value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS)):
        return None
    members = [m for m in members if m is not type(None)]
    if str in members and any(is_enum(m) or typing.get_origin(m) is Literal for m in members):
        members.remove(str)  # `OptimizerNames | str`: the string stands for one of the enum's values
    if isinstance(value, str):
        text = value.strip()
        # text means a bool, number, list or object where the type allows one and a string otherwise; beside str,
        # only "true"/"false" are bools ("no" is a string there) and only JSON text is a list or an object
        with_str = str in members
        tried = [m for m in members if m is not str and not (with_str and m is bool and text.lower() not in ("true", "false"))
                 and (not is_sequence(m) or text.startswith("[") or not with_str)
                 and (not _is_mapping(m) or text.startswith("{"))]
        tried += [str] if with_str else []
        if text[:1] in "{[" and text and any(_is_mapping(m) if text[0] == "{" else is_sequence(m) for m in tried):
            tried = [m for m in tried if (_is_mapping(m) if text[0] == "{" else is_sequence(m))]  # JSON text: JSON errors
    else:
        tried = sorted(members, key=lambda m: m is float)  # 1 stays an int for `int | float`
    reasons = []
    for member in tried:
        try:
            return coerce(value, member)
        except Mismatch as e:
            reasons.append(str(e))
    telling = [r for r in reasons if r.startswith(("must be one of", "must be a finite number", "must be an integer that fits"))
               or "(JSON text" in r]
    if telling:  # the reason beats the list of types
        raise Mismatch(telling[0])
    raise Mismatch(f"must be {type_name(tp)}, got {value!r}")


# -------------------------------------------------------------------- layers


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A settings field: ``default`` (lists and dicts copied per instance), its ``--help`` text and more metadata:
    ``aliases`` (more flag spellings), ``group`` (its heading in ``--help``), ``metavar``, ``choices``,
    ``positional``, ``parse`` (reads a text value, e.g. ``1:5`` as a ratio; raises ValueError with the reason)."""
    meta = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def settings_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``name -> (field, type hint)`` of the fields a settings dataclass takes in ``__init__``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


@dataclass
class Layer:
    """Settings from one source: a file, a stored definition, the command line.

    ``source`` starts the error lines of its values (a path, ``command line``); ``flags`` maps a key to the
    name a message gives it (the flag it was given as, or ``FILE: field 'pruner.type'`` for a nested key).
    """

    source: str
    values: Mapping[str, Any]
    flags: Mapping[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        return self.flags[key] if key in self.flags else f"{self.source}: field {key!r}"


def resolve(cls: type, *layers: Layer, base: Any = None, ignore: frozenset[str] | set[str] = frozenset(),
            error: type[GemmaOcrError] = GemmaOcrError) -> Any:
    """An instance of the settings dataclass ``cls``: its defaults (or ``base``'s values) < ``layers`` in order.

    Each value is checked with :func:`coerce` against its field's type (and the field's ``choices``
    metadata); keys starting with ``_`` are comments; keys in ``ignore`` belong to someone else.
    ``validate()`` of the class, if it has one, runs on the result; a :class:`FieldError` it raises is
    reported against the layer that set that field. Errors are raised as ``error``.
    """
    fields = settings_fields(cls)
    values: dict[str, Any] = {}
    origin: dict[str, Layer] = {}
    for layer in layers:
        if not isinstance(layer.values, Mapping):
            raise error(f"{layer.source}: expected an object of settings, got {type(layer.values).__name__}")
        for key, value in layer.values.items():
            if isinstance(key, str) and (key.startswith("_") or key in ignore):
                continue
            if key not in fields:
                raise unknown_key(layer.source, key, list(fields), error=error)
            try:
                values[key] = check_field(fields[key], value)
            except Mismatch as e:
                raise error(f"{layer.where(key)} {e}") from None
            origin[key] = layer
    try:
        obj = dataclasses.replace(base, **values) if base is not None else cls(**values)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except FieldError as e:
        at = origin.get(e.name) or (layers[-1] if layers else None)
        raise error(f"{at.where(e.name) if at else 'config: field ' + repr(e.name)} {e.why}") from None
    return obj


def check_field(spec: tuple[dataclasses.Field, Any], value: Any) -> Any:
    """``value`` for one field (as :func:`settings_fields` gives it): its ``parse`` for text, :func:`coerce`,
    its ``choices``."""
    f, tp = spec
    parse = f.metadata.get("parse")
    if parse is not None and isinstance(value, str):
        try:
            value = parse(value)
        except ValueError as e:
            raise Mismatch(str(e)) from None
    out = coerce(value, tp)
    choices = f.metadata.get("choices")
    if choices is not None and out is not None:
        out = _choice(out, list(choices))
    return out


class Settings:
    """Methods of a settings dataclass: :meth:`from_dict`, :meth:`to_dict`, :meth:`replace`, :meth:`validate`.

    Subclasses set ``ignored_keys`` (keys of a file that belong to another reader) and ``error`` (the
    exception type of their errors), and extend :meth:`validate` with range checks raising
    :class:`FieldError`.
    """

    ignored_keys: typing.ClassVar[frozenset[str]] = frozenset()
    error: typing.ClassVar[type[GemmaOcrError]] = GemmaOcrError

    @classmethod
    def field_names(cls) -> list[str]:
        return list(settings_fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config"):
        """A checked instance from ``data`` (missing keys keep their defaults)."""
        return resolve(cls, Layer(source, data), ignore=cls.ignored_keys, error=cls.error)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self, **changes: Any):
        """A checked copy with ``changes`` applied."""
        return resolve(type(self), Layer("config", changes), base=self, error=self.error)

    def at_least(self, low: float, *names: str, most: float | None = None) -> None:
        """A range check for :meth:`validate`: :class:`FieldError` on the first of ``names`` below ``low`` (or
        above ``most``); None passes (not set)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and (value < low or (most is not None and value > most)):
                raise FieldError(name, f"must be >= {low}, got {value}" if most is None else
                                 f"must be in [{low}, {most}], got {value}")

    def validate(self) -> None:
        """Check every field's type (a value set from Python included); subclasses add range checks."""
        for name, spec in settings_fields(type(self)).items():
            try:
                check_field(spec, getattr(self, name))
            except Mismatch as e:
                raise FieldError(name, str(e)) from None
