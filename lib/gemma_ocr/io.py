"""Reading and atomically writing JSON/YAML files with clear errors; checking that a location takes files.

- a missing file or a syntax error is one line naming the file (:func:`read_json`, :func:`read_yaml`);
- a file is written through a temporary file and a rename, so readers never see half of it
  (:func:`atomic_write_text`, :func:`atomic_write_json`), with the user's umask (:func:`umask_mode`;
  ``tempfile`` makes 0600 files);
- a location that cannot take files (read-only, full, no permission) is refused before any work
  (:func:`check_writable`), and a failed write is one line (:func:`reporting_write_errors`, :func:`out_of_room`).

Where a command may write (an output is never an input; a folder it writes holds a manifest) is
:mod:`gemma_ocr.outputs`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

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


_WRITE_PROBLEMS = {
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large",
    errno.ENOTDIR: "a file stands where a folder should be", errno.EISDIR: "it is a folder",
}


def write_problem(error: OSError) -> str:
    """A short reason for a failed write (``read-only file system``, ``no space left on device``, ...)."""
    return _WRITE_PROBLEMS.get(error.errno or 0) or (error.strerror or str(error)).lower()


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
# How libraries that do not raise OSError say it: tokenizers and safetensors (Rust), Python's text of the errno.
_NO_ROOM_TEXT = re.compile(r"no space left on device|disk quota exceeded|file too large|read-only file system"
                           r"|os error (28|122|27|30)\b", re.IGNORECASE)
NEARLY_FULL_BYTES = 1 << 20  # a failed write with this little room left is taken for lack of room


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` resolved, or its nearest ancestor that exists (where its file system can be asked about)."""
    where = Path(path).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def out_of_room(error: BaseException, folder: str | os.PathLike[str]) -> str | None:
    """Why a write in ``folder`` failed for lack of room (``no space left on device``, ...), or None when ``error``
    is something else.

    An ``OSError`` says so by its errno, the Rust libraries (tokenizers, safetensors) in its text; ``torch.save``
    says only that its stream failed (``iostream error``), so a ``RuntimeError`` counts when ``folder``'s file
    system has under :data:`NEARLY_FULL_BYTES` free.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_ROOM:
            return write_problem(seen)
        found = _NO_ROOM_TEXT.search(str(seen))
        if found:
            code = found.group(1)
            return _WRITE_PROBLEMS.get(int(code), found.group(0).lower()) if code else found.group(0).lower()
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, (OSError, RuntimeError)):
        try:
            free = shutil.disk_usage(nearest_existing(folder)).free
        except OSError:
            return None
        if free < NEARLY_FULL_BYTES:
            return f"no space left on device: {free:,} bytes free"
    return None


def check_writable(path: str | os.PathLike[str], what: str = "output", folder: bool = False) -> Path:
    """Fail with one line unless files can be written at ``path`` (a file, or a folder with ``folder=True``).

    The nearest existing folder on the way must be a folder in which a file can be created and
    written (a small probe file is written, synced and removed), so a read-only, full or
    permission-denied location is refused before any work starts. ``what`` names the setting
    (e.g. ``--output-file``) in the message.
    """
    path = Path(path)
    target = path if folder else path.parent
    probe_dir = nearest_existing(target)
    if not probe_dir.is_dir():
        raise GemmaOcrError(f"{what} {path}: cannot write there ({probe_dir} is a file, not a folder); "
                            f"choose another location")
    if not folder and path.is_dir():
        raise GemmaOcrError(f"{what} {path}: is a folder, not a file; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gemma-ocr-write-check-", dir=probe_dir)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise GemmaOcrError(f"{what} {path}: cannot write in {probe_dir} ({write_problem(e)}); choose another "
                            f"location, or fix its permissions or free space") from None
    return path


@contextlib.contextmanager
def reporting_write_errors(path: str | os.PathLike[str], kept: str = "") -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into one :class:`GemmaOcrError` line (``kept``: what stays as it was)."""
    try:
        yield
    except OSError as e:
        note = f"; {kept}" if kept else ""
        raise GemmaOcrError(f"cannot write {path} ({write_problem(e)}){note}; free space or fix the "
                            f"location's permissions, then rerun") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to ``path`` via a temporary file and a rename: readers never see half a file.

    A failed write (full disk, read-only folder) is one :class:`GemmaOcrError` line; the previous
    file stays as it was.
    """
    path = Path(path)
    with reporting_write_errors(path, "the previous version of the file, if any, is unchanged"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600 files; give the file the usual permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int = 2) -> Path:
    """Serialise ``data`` as UTF-8 JSON (non-ASCII kept readable) and write it atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


# ---------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so no other thread ever sees it changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(mode: int) -> int:
    """``mode`` (0o666 for a file, 0o777 for a folder) less the user's umask: what ``open``/``mkdir`` would give."""
    return mode & ~current_umask()


def read_json_lines(path: str | os.PathLike[str], fix: str, what: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each line of a JSON Lines file, blank lines skipped (a UTF-8 byte-order mark is
    read past).

    A file that is not UTF-8 text, or a line that is not JSON, is one line naming the file (and the line) and ending
    in ``fix``; ``what`` names what such a file is not (e.g. ``"a transcriptions file of transcribe.py"``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        kind = f", so not {what}" if what else ""
        raise GemmaOcrError(f"{path}: not UTF-8 text (byte {e.start}){kind}; {fix}") from None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise GemmaOcrError(f"{path}: line {number} is not JSON ({e.msg}); {fix}") from None
        yield number, value
