"""The one configuration layer: settings dataclasses filled from defaults < a JSON/YAML file < flags.

A settings class is a dataclass: its field names are the config keys (``learning_rate``) and the flags
(``--learning-rate``, ``--learning_rate``); help text is in ``metadata["help"]``, more flag spellings in
``metadata["aliases"]`` (the convention of transformers' ``TrainingArguments``). transformers'
:class:`~transformers.HfArgumentParser` makes the flags; this module adds the rest: :func:`coerce` (the
one value check, for file values and flag text alike), :func:`resolve` (defaults < each :class:`Layer`:
a file, a stored definition, the command line) and :class:`ConfigParser` (``--config FILE`` + flags;
:meth:`~ConfigParser.parse_layers` for a caller that adds a layer of its own). Every error a user can
cause is one :class:`~gemma_ocr.errors.GemmaOcrError` line naming the key or flag and the closest valid name.

A small program with no settings dataclass (split, count-score, ...) uses :class:`ArgumentParser` (argparse with
the same errors) and :func:`flag_value` (the same value check); it does not import transformers, which only
:class:`ConfigParser` needs (it takes a second).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import read_json, read_yaml
from gemma_ocr.outputs import check_outputs_not_inputs

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


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _is_sequence(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return origin in (list, tuple, collections.abc.Sequence)


def _is_mapping(tp: Any) -> bool:
    return (typing.get_origin(tp) or tp) in (dict, collections.abc.Mapping)


def type_name(tp: Any) -> str:
    """How an error line names a type: ``an integer``, ``a list of strings``, ``true or false or null``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(a) for a in _members(tp)))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    if _is_enum(tp):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if _is_sequence(tp):
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
    if _is_enum(tp):
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
    if tp is str:
        if isinstance(value, str):
            return value
        raise Mismatch("must be a string" + got)
    if tp is Path:
        if isinstance(value, (str, os.PathLike)) and str(value).strip():
            return Path(value)
        raise Mismatch("must be a path" + got)
    if _is_sequence(tp):
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


def _coerce_union(value: Any, tp: Any) -> Any:
    members = list(_members(tp))
    if type(None) in members and (value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS)):
        return None
    members = [m for m in members if m is not type(None)]
    if str in members and any(_is_enum(m) or typing.get_origin(m) is Literal for m in members):
        members.remove(str)  # `OptimizerNames | str`: the string stands for one of the enum's values
    if isinstance(value, str):
        text = value.strip()
        # text means a bool, number, list or object where the type allows one and a string otherwise; beside str,
        # only "true"/"false" are bools ("no" is a string there) and only JSON text is a list or an object
        with_str = str in members
        tried = [m for m in members if m is not str and not (with_str and m is bool and text.lower() not in ("true", "false"))
                 and (not _is_sequence(m) or text.startswith("[") or not with_str)
                 and (not _is_mapping(m) or text.startswith("{"))]
        tried += [str] if with_str else []
        if text[:1] in "{[" and text and any(_is_mapping(m) if text[0] == "{" else _is_sequence(m) for m in tried):
            tried = [m for m in tried if (_is_mapping(m) if text[0] == "{" else _is_sequence(m))]  # JSON text: JSON errors
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


class _DuplicateKey(Exception):
    def __init__(self, key: Any, lines: Sequence[int] = ()):
        super().__init__(key)
        self.key, self.lines = key, list(lines)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: an object, refusing a key it has twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _unique_yaml_loader() -> type:
    """PyYAML's SafeLoader refusing a mapping that has a key twice (merge keys, ``<<``, may still be overridden)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: SafeLoader's own error names it
                        continue
                    if first != key_node.start_mark.line + 1:
                        raise _DuplicateKey(key, [first, key_node.start_mark.line + 1])
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_config_file(path: str | os.PathLike[str], what: str = "config file",
                     error: type[GemmaOcrError] = GemmaOcrError) -> Any:
    """The content of a JSON (or ``.yaml``/``.yml``) configuration file, with one line (of type ``error``) for a key
    given twice in one object, which JSON and YAML readers otherwise settle silently by keeping the last.

    Every configuration file is read here (training, search, the Khmer-digits experiments).
    """
    path = Path(path)
    yaml_file = path.suffix.lower() in {".yaml", ".yml"}
    data = read_yaml(path, what=what) if yaml_file else read_json(path, what=what)  # their syntax errors
    try:
        if yaml_file:
            import yaml

            yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_yaml_loader())  # noqa: S506 (a SafeLoader)
        else:
            json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_unique_pairs)
    except _DuplicateKey as e:
        lines = e.lines or _json_key_lines(path, e.key)
        at = "" if len(lines) != 2 else f" (line {lines[0]})" if lines[0] == lines[1] else f" (lines {lines[0]} and {lines[1]})"
        raise error(f"{path}: key {e.key!r} is given twice in one object{at}; only one value can hold: keep one "
                    f"and remove the other") from None
    return data


def _json_key_lines(path: Path, key: str) -> list[int]:
    """The lines where ``"key":`` stands in a JSON file."""
    text = path.read_text(encoding="utf-8-sig")
    return [text.count("\n", 0, m.start()) + 1 for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON (or ``.yaml``/``.yml``) config file into a dict; one clear line when it is not an object or
    has a key twice."""
    path = Path(path)
    data = read_config_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GemmaOcrError(f"{path}: a config file must hold an object of settings, not a {type(data).__name__}")
    return data


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


# -------------------------------------------------------------------- flags


def _argparse_type(tp: Any) -> Any:
    """The type HfArgumentParser is shown for a field: it decides the flag's shape (switch, list, choices).

    The values themselves are checked by :func:`coerce` with the real type; HfArgumentParser only
    handles ``X | None`` unions and unions with ``str``.
    """
    members = [m for m in _members(tp) if m is not type(None)]
    if bool in members:
        return bool  # a switch: --flag, --flag false, --no-flag
    if str not in members and any(_is_sequence(m) for m in members):
        item = typing.get_args(next(m for m in members if _is_sequence(m)))
        return list[item[0]] if item else list[str]  # --flag a b c
    for m in members:
        if _is_enum(m) or typing.get_origin(m) is Literal:
            return m
    return str


def _aliases(f: dataclasses.Field) -> list[str]:
    aliases = f.metadata.get("aliases") or []
    return [aliases] if isinstance(aliases, str) else list(aliases)


def flag_name(f: dataclasses.Field) -> str:
    """The flag that messages name for a field: its first alias, or ``--dash-name``."""
    return (_aliases(f) or ["--" + f.name.replace("_", "-")])[0]


def _flag_views(cls: type) -> list[type]:
    """Dataclasses that show HfArgumentParser the fields of ``cls``: one per ``--help`` group, with the
    flag-shaping type of :func:`_argparse_type` and the help text (default appended)."""
    groups: dict[str, list[tuple[str, Any, Any]]] = {}
    for name, (f, tp) in settings_fields(cls).items():
        if f.metadata.get("positional"):
            continue
        meta = {k: v for k, v in f.metadata.items() if k in ("help", "aliases", "metavar")}
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        shown = str(default) if isinstance(default, Path) else repr(default)
        if isinstance(default, float) and len(shown) > 12:
            shown = f"{default:.6g}"  # 1/6: 0.166667
        meta["help"] = (str(meta.get("help") or name.replace("_", " ")) + f" (default: {shown})").replace("%", "%%")
        title = f.metadata.get("group") or getattr(cls, "_argument_group_name", None) or "settings"
        groups.setdefault(title, []).append((name, _argparse_type(tp), field(default=None, metadata=meta)))
    views = []
    for title, fields in groups.items():
        view = dataclasses.make_dataclass(f"{cls.__name__}Flags", fields)
        view._argument_group_name = title  # type: ignore[attr-defined]
        views.append(view)
    return views


def flag_value(tp: Any, parse: Callable[[str], Any] | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` that reads a flag's text as the layer reads it: ``parse`` (if any), then :func:`coerce`.

    For the flags of a program with no settings dataclass; its errors are those of :func:`resolve`
    (``--seed must be an integer, got 'x'``).
    """
    def convert(text: str) -> Any:
        try:
            return coerce(parse(text) if parse is not None else text, tp)
        except ValueError as e:  # Mismatch included
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = type_name(tp)
    convert.layer_value = True  # type: ignore[attr-defined]
    return convert


class GivenOnce(argparse.Action):
    """A flag that may be given once (``--config FILE``): a second one is refused, since it would silently
    replace the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if isinstance(values, str) and not values.strip():
            raise GemmaOcrError(f"{option_string} is empty: give a file (or leave the flag out)")
        before = getattr(namespace, self.dest, self.default)
        if before is not self.default:  # argparse sets the default object itself before parsing
            raise GemmaOcrError(f"{option_string} is given twice ({before}, then {values}); it takes one file, and "
                                f"the second would replace the first: merge them into one file, or give flags for "
                                f"the settings to change")
        setattr(namespace, self.dest, values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the layer's errors: one line naming the flag (a bad value, a missing one), an unknown
    flag with the closest known one, no abbreviations. The parser of programs with no settings dataclass,
    and the base of :class:`ConfigParser`."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.flags: dict[str, str] = {}  # dest -> the flag messages name (default: the flag given)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            self.refuse(extra)
        return namespace

    def refuse(self, extra: list[str]) -> typing.NoReturn:
        """The error for arguments no flag takes: the first, with the closest flag."""
        first = extra[0]
        if not first.startswith("-"):
            raise GemmaOcrError(f"unexpected argument {first!r} (see --help)")
        flag = first.split("=", 1)[0]
        known = sorted({o for o in self._option_string_actions if o.startswith("--") and "_" not in o})
        hint = did_you_mean(flag.replace("_", "-"), known, quote=False) or " (see --help)"
        raise GemmaOcrError(f"unknown flag {flag}{hint}")

    def error(self, message: str) -> typing.NoReturn:
        """argparse's own errors (a flag without its value, a bad value, ...) as one line naming the flag."""
        match = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
        if match:
            action = self._option_string_actions.get(match.group(1))
            flag = self.flags.get(action.dest, match.group(1)) if action else match.group(1)
            if action is not None and getattr(action.type, "layer_value", False):  # worded as resolve() words it
                raise GemmaOcrError(f"{flag} {match.group(2)}")
            message = f"{flag}: {match.group(2)}"
        raise GemmaOcrError(f"{message} (see --help)")


def _path_like(value: Any) -> bool:
    """Whether ``value`` may name a file: a path, or a short one-line text (or a list of them)."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_path_like(v) for v in value)
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and 0 < len(value) < 4096 and not any(c in value for c in "\0\n\r")


class ConfigParser(ArgumentParser):
    """The flags of settings dataclasses, made by transformers' HfArgumentParser, and ``--config FILE``.

    A flag left out is "not given" rather than its default, so :meth:`parse_settings` keeps
    defaults < config file < flags. Every boolean field is a switch (``--x``, ``--x false``, ``--no-x``).
    Errors (unknown flags with the closest one, bad values, unknown keys in the file) are one line.
    ``ignore_keys``: top-level keys of the config file that belong to another reader. A field's
    ``metadata["group"]`` puts its flag under that heading of ``--help``.
    """

    def __init__(self, dataclass_types: type | Sequence[type], *, config_file: bool = True,
                 ignore_keys: frozenset[str] | set[str] = frozenset(), **kwargs: Any):
        from transformers import HfArgumentParser  # here, not at import: it takes a second to import

        kwargs.setdefault("usage", "%(prog)s [flags]" + (" [--config FILE]" if config_file else "") + "  (--help lists them)")
        self.settings_types = [dataclass_types] if isinstance(dataclass_types, type) else list(dataclass_types)
        self.ignore_keys = frozenset(ignore_keys)
        self._config_file = config_file
        fields = HfArgumentParser([view for cls in self.settings_types for view in _flag_views(cls)], add_help=False)
        super().__init__(parents=[fields], **kwargs)
        for cls in self.settings_types:
            for name, (f, tp) in settings_fields(cls).items():
                if f.metadata.get("positional"):  # e.g. the images of `transcribe`
                    self.add_argument(name, nargs="+" if _is_sequence(_argparse_type(tp)) else None,
                                      metavar=f.metadata.get("metavar"), help=f.metadata.get("help"))
                    self.flags[name] = f.metadata.get("metavar") or name
                    continue
                self.flags[name] = flag_name(f)
                if _argparse_type(tp) is bool:
                    self._add_negative(f)
        for action in self._actions:
            if action.dest in self.flags and action.option_strings:
                if action.choices and len(action.choices) <= 8:
                    action.metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
                # values stay text here: resolve() checks them with coerce(), as it checks a file's
                action.type, action.choices, action.default, action.required = None, None, argparse.SUPPRESS, False
        if config_file:
            self.add_argument("--config", metavar="FILE", default=None, action=GivenOnce,
                              help="JSON or YAML file of settings (the keys are the flag names with _); flags override it")

    def _add_negative(self, f: dataclasses.Field) -> None:
        """``--no-x`` (and ``--no-<alias>``) for a switch."""
        names = [f.name, *(a.lstrip("-") for a in _aliases(f))]
        negatives = sorted({n for name in names for n in (f"--no_{name}", f"--no-{name.replace('_', '-')}")}
                           - set(self._option_string_actions))
        if negatives:
            self.add_argument(*negatives, action="store_false", dest=f.name, default=argparse.SUPPRESS,
                              help=argparse.SUPPRESS)

    # ---------------------------------------------------------------- parsing

    def parse_layers(self, args: Sequence[str] | None = None, known_only: bool = False
                     ) -> tuple[list[tuple[Layer, Layer]], argparse.Namespace]:
        """``[(file layer, command-line layer) per settings class]`` and a namespace of the other flags.

        ``known_only``: arguments no flag takes are left in the namespace's ``extra`` (a list) instead of
        refused (e.g. the flags serve.py hands on to the engine).
        """
        namespace, extra = self.parse_known_args(args)
        if extra and not known_only:
            self.refuse(extra)
        given = vars(namespace)
        path = given.pop("config", None) if self._config_file else None
        self.config_path = path
        file_values = load_config(path) if path else {}
        names = [set(settings_fields(cls)) for cls in self.settings_types]
        every = sorted(set().union(*names))
        for key in file_values:
            if not (isinstance(key, str) and (key.startswith("_") or key in self.ignore_keys or key in every)):
                raise unknown_key(str(path), key, every)
        layers = []
        for keys in names:
            flagged = {k: given.pop(k) for k in list(given) if k in keys}
            layers.append((Layer(str(path or "config file"), {k: v for k, v in file_values.items() if k in keys}),
                           Layer(COMMAND_LINE, flagged, {k: self.flags[k] for k in keys})))
        if known_only:
            given["extra"] = extra
        return layers, argparse.Namespace(**given)

    def parse_settings(self, args: Sequence[str] | None = None, error: type[GemmaOcrError] = GemmaOcrError,
                       known_only: bool = False) -> tuple[Any, ...]:
        """``(instance per settings class..., namespace of the other flags)``: defaults < ``--config`` < flags."""
        layers, namespace = self.parse_layers(args, known_only)
        settings = [resolve(cls, file, flags, error=error) for cls, (file, flags) in zip(self.settings_types, layers)]
        if self.config_path:  # no setting may name the config file itself (an output there would replace it)
            named = {self.flags.get(name, name): value for s in settings for name, value in vars(s).items()
                     if _path_like(value)}
            check_outputs_not_inputs({"the config file (--config)": self.config_path}, named, holding=None)
        return (*settings, namespace)
