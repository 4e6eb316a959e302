"""Reading a configuration file: JSON or YAML, one line for a syntax error or a key given twice in one object.

Every configuration file is read here (training, search, the Khmer-digits experiments): :func:`read_config_file`
for any content, :func:`load_config` for an object of settings. The values are checked by
:mod:`gemma_ocr.settings`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import read_json, read_yaml


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


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader refusing a mapping that has a key twice (merge keys, ``<<``, may still be overridden)."""

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
            yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
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
