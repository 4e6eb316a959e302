"""Reading and atomically writing JSON/YAML files with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gemma_ocr.errors import GemmaOcrError


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Load a JSON file, turning a missing file or a syntax error into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise GemmaOcrError(f"{what} not found: {path} (check the path, or create it first)")
    try:
        with path.open(encoding="utf-8-sig") as f:  # a byte-order mark (invisible in editors) is dropped
            return json.load(f)
    except json.JSONDecodeError as e:
        raise GemmaOcrError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg} (fix the file's syntax)"
        ) from None
    except UnicodeDecodeError:
        raise GemmaOcrError(f"{path}: not UTF-8 text (save it as UTF-8 JSON)") from None


def read_yaml(path: str | os.PathLike[str], what: str = "YAML file") -> Any:
    """Load a YAML file with the same error style as :func:`read_json`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GemmaOcrError(f"{what} not found: {path} (check the path)")
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GemmaOcrError(f"{path}: malformed YAML{where} (fix the file's syntax)") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to ``path`` via a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int = 2) -> Path:
    """Serialise ``data`` as UTF-8 JSON (non-ASCII kept readable) and write it atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")
