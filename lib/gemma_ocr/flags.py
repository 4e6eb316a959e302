"""The flags of every program, with the configuration layer's errors: one line naming the flag and the closest one.

:class:`ConfigParser` makes the flags of settings dataclasses with transformers' ``HfArgumentParser`` and adds
``--config FILE``: :meth:`~ConfigParser.parse_settings` keeps defaults < the file < flags (each value checked by
:func:`gemma_ocr.settings.coerce`), :meth:`~ConfigParser.parse_layers` serves a caller that adds a layer of its own.

A small program with no settings dataclass (split, count-score, ...) uses :class:`ArgumentParser` (argparse with
the same errors) and :func:`flag_value` (the same value check); it does not import transformers, which only
:class:`ConfigParser` needs (it takes a second).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from gemma_ocr.config_files import load_config
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.settings import (COMMAND_LINE, Layer, coerce, did_you_mean, is_enum, is_sequence, resolve,
                                settings_fields, type_name, union_members, unknown_key)


def _argparse_type(tp: Any) -> Any:
    """The type HfArgumentParser is shown for a field: it decides the flag's shape (switch, list, choices).

    The values themselves are checked by :func:`coerce` with the real type; HfArgumentParser only
    handles ``X | None`` unions and unions with ``str``.
    """
    members = [m for m in union_members(tp) if m is not type(None)]
    if bool in members:
        return bool  # a switch: --flag, --flag false, --no-flag
    if str not in members and any(is_sequence(m) for m in members):
        item = typing.get_args(next(m for m in members if is_sequence(m)))
        return list[item[0]] if item else list[str]  # --flag a b c
    for m in members:
        if is_enum(m) or typing.get_origin(m) is Literal:
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
                    self.add_argument(name, nargs="+" if is_sequence(_argparse_type(tp)) else None,
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
