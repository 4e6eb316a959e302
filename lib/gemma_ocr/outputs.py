"""Where a command may write: an output is never one of its inputs, and a folder it writes holds a manifest.

The rules every command that writes follows live here, each in one place:

- no output path may be one of the command's inputs, or a folder holding one (:func:`check_outputs_not_inputs`,
  paths resolved with symbolic links followed, the same file under two names found by its inode);
- a command deletes or replaces only what the project wrote: every folder it writes holds a manifest
  (:data:`MANIFEST`) listing its files, and :class:`OutputFolder` replaces only files listed there, unchanged
  since (size and modification time), and says which;
- outputs keep the user's umask (:func:`fix_modes` for a staged folder; ``tempfile`` makes 0600 files and 0700
  folders).

Reading files and writing one atomically is :mod:`gemma_ocr.io`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, umask_mode

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- permissions


def fix_modes(root: str | os.PathLike[str]) -> None:
    """Give ``root`` and everything under it the modes the user's umask gives new files and folders.

    ``tempfile.mkdtemp`` makes 0700 folders and ``mkstemp`` (and libraries that write through it, e.g.
    safetensors) 0600 files: a staging folder moved into place would otherwise keep them.
    """
    root = Path(root)
    folder_mode, file_mode = umask_mode(0o777), umask_mode(0o666)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(folder_mode if path.is_dir() else file_mode)


# ---------------------------------------------------------------- outputs are never inputs

PathLike = Union[str, "os.PathLike[str]"]
NamedPaths = Mapping[str, Union[PathLike, Iterable[PathLike], None]]


def _flatten(named: NamedPaths) -> Iterator[tuple[str, Path]]:
    for name, value in named.items():
        if value is None or value == "":
            continue
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        for v in values:
            if v is not None and str(v) != "":
                yield name, Path(v)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # symbolic links followed
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_outputs_not_inputs(inputs: NamedPaths, outputs: NamedPaths, fix: str | None = None,
                             holding: str | None = "replacing the folder would delete it") -> None:
    """Fail with one line when an output path is one of the inputs or a folder that holds one.

    ``inputs`` and ``outputs`` map a name (a flag such as ``--output``, or words such as ``the data file``)
    to a path or a list of paths (None and "" are skipped). Paths are compared resolved, symbolic links
    followed, and existing ones also by device and inode (hard links, a second mount of the same folder).
    Call it before any work: the message names both and ends in ``fix`` (default: choose another <name>).
    ``holding``: what would happen to an input inside an output folder (None: an output folder may hold inputs,
    as one that files are written into beside the others may).
    """
    by_path: dict[Path, tuple[str, Path]] = {}
    by_inode: dict[tuple[int, int], tuple[str, Path]] = {}
    for name, out in _flatten(outputs):
        by_path.setdefault(out.resolve(), (name, out))
        ident = _identity(out)
        if ident is not None:
            by_inode.setdefault(ident, (name, out))
    if not by_path:
        return
    for in_name, source in _flatten(inputs):
        resolved = source.resolve()
        hit = by_path.get(resolved)
        same = f" (both are {resolved})"
        if hit is None and by_inode:
            ident = _identity(source)
            hit = by_inode.get(ident) if ident is not None else None
            same = " (the same file under another name)"
        if hit is not None:
            name, out = hit
            same = "" if str(out) == str(source) else same
            raise GemmaOcrError(f"{name} {out} is {in_name} {source}{same}, an input of this command: writing "
                                f"there would replace it; {fix or f'choose another {name}'}")
        for folder in resolved.parents if holding else ():
            hit = by_path.get(folder)
            if hit is not None:
                name, out = hit
                raise GemmaOcrError(f"{name} {out} holds {in_name} {source}, an input of this command: "
                                    f"{holding}; {fix or f'choose another {name}'}")


# ---------------------------------------------------------------- folders the project writes

MANIFEST = ".gemma-ocr-manifest.json"
SHOWN = 5  # file names a message or log line lists before it gives the count of the others


def listed(names: Iterable[str], shown: int = SHOWN) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 12 more``."""
    names = list(names)
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class OutputFolder:
    """A folder a command writes, with the manifest (:data:`MANIFEST`) of what the project wrote there.

    Two ways to write one:

    - replaced as a whole (a merged checkpoint): :meth:`check_replace` before any work, then :meth:`replace`
      with a complete staging folder (:meth:`staging`);
    - files written into it (a report, a split): :meth:`check_files` with their names before any work,
      then :meth:`record` once they are written.

    An existing file is replaced only when the manifest lists it and it is unchanged since (size and
    modification time) and ``overwrite`` allows it; a file the project did not write is never deleted
    or replaced, and what is replaced is logged. ``flag`` names the setting in messages (``--output-dir``);
    ``overwrite_flag`` the switch that allows replacing (None: files the project wrote are replaced
    without one, as a rerun of a report does).
    """

    def __init__(self, path: str | os.PathLike[str], flag: str = "--output-dir", command: str = "gemma-ocr",
                 overwrite: bool = False, overwrite_flag: str | None = "--overwrite"):
        self.path = Path(path)
        self.flag = flag
        self.command = command
        self.overwrite = overwrite or overwrite_flag is None
        self.overwrite_flag = overwrite_flag

    # ------------------------------------------------------------ what is there

    @property
    def real(self) -> Path:
        """The folder itself (a symbolic link to it followed)."""
        return self.path.resolve()

    def manifest(self) -> dict[str, dict[str, Any]]:
        """The files the manifest lists (relative POSIX paths -> size, mtime_ns and the command that wrote them
        as ``by``); {} when there is none."""
        path = self.real / MANIFEST
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files, by = data["files"], str(data["written_by"])
            return {str(k): {"size": int(v["size"]), "mtime_ns": int(v["mtime_ns"]), "by": str(v.get("by", by))}
                    for k, v in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s is not a manifest gemma-ocr can read: every file in %s counts as not written by it",
                        path, self.path)
            return {}

    def _entries(self) -> list[str]:
        """Every file, link and folder in the folder (relative POSIX paths), the manifest left out."""
        root = self.real
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                rel = (here / name).relative_to(root).as_posix()
                if rel != MANIFEST:
                    found.append(rel)
        return found

    def ours(self, rel: str, manifest: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether ``rel`` (a file, or a folder of listed files) was written by this command and is unchanged
        (a command never replaces another's files: make_tiny_model.py never takes a merged model's folder)."""
        path = self.real / rel
        if path.is_symlink():
            return False
        if path.is_dir():
            return any(name.startswith(rel + "/") and self.ours(name, manifest) for name in manifest)
        stamp = manifest.get(rel)
        if stamp is None or stamp.get("by") != self.command:
            return False
        try:
            return _stamp(path) == {"size": stamp["size"], "mtime_ns": stamp["mtime_ns"]}
        except OSError:
            return False

    def foreign(self, names: Iterable[str] | None = None) -> list[str]:
        """Of ``names`` (default: everything in the folder), those that exist and the project did not write,
        or that changed since it did."""
        if not self.real.is_dir():
            return []
        manifest = self.manifest()
        candidates = self._entries() if names is None else [n for n in names if (self.real / n).exists()
                                                                     or (self.real / n).is_symlink()]
        return [n for n in candidates if not self.ours(n, manifest)]

    # ------------------------------------------------------------ checks before any work

    def check_place(self, inputs: NamedPaths = {}, whole: bool = False) -> Path:
        """Before any work: fail with one line when the folder is a file or one of ``inputs`` (or, when it is
        replaced as a ``whole``, holds one)."""
        self._check_place(inputs, whole)
        return self.path

    def _check_place(self, inputs: NamedPaths, whole: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise GemmaOcrError(f"{self.flag} {self.path} is a file, not a folder; choose another {self.flag}")
        if whole:
            check_outputs_not_inputs(inputs, {self.flag: self.path})
        else:  # files go into it beside the others: only the folder itself may not be an input
            check_outputs_not_inputs(inputs, {self.flag: self.path}, holding=None)

    def _refuse_foreign(self, foreign: list[str], action: str, verb: str = "delete") -> None:
        if foreign:
            raise GemmaOcrError(f"{self.flag} {self.path} holds {len(foreign)} files {self.command} did not write "
                                f"(or that changed since): {listed(foreign)}; {action} would {verb} them, so nothing "
                                f"was changed: choose another {self.flag}, or move them away")

    def check_replace(self, inputs: NamedPaths = {}) -> Path:
        """Before any work on a folder replaced as a whole: fail with one line unless it is missing, empty, or
        (with ``overwrite``) holds only files the project wrote; it must not be or hold an input."""
        self._check_place(inputs, whole=True)
        if not self.path.is_dir():
            return self.path
        entries = self._entries()
        if not entries:
            return self.path
        self._refuse_foreign(self.foreign(), "replacing the folder")
        if not self.overwrite:
            raise GemmaOcrError(f"{self.flag} {self.path} is not empty: it holds {len(entries)} files an earlier "
                                f"{self.command} wrote ({listed(entries)}); pass {self.overwrite_flag} to replace them, "
                                f"or choose another {self.flag}")
        return self.path

    def check_files(self, names: Iterable[str], inputs: NamedPaths = {}) -> list[str]:
        """Before writing the files ``names`` (relative paths) into the folder: fail with one line when one of
        them exists and the project did not write it (or without ``overwrite``), or is an input. Returns the
        names that will be replaced."""
        names = list(names)
        self._check_place(inputs, whole=False)
        check_outputs_not_inputs(inputs, {self.flag: [self.path / n for n in names]})
        existing = [n for n in names if (self.real / n).exists() or (self.real / n).is_symlink()]
        self._refuse_foreign(self.foreign(existing), "writing there", "replace")
        if existing and not self.overwrite:
            raise GemmaOcrError(f"{self.flag} {self.path} already holds {len(existing)} files an earlier "
                                f"{self.command} wrote ({listed(existing)}); pass {self.overwrite_flag} to replace "
                                f"them, or choose another {self.flag}")
        return existing

    # ------------------------------------------------------------ writing

    def _write_manifest(self, folder: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
        data = {"written_by": self.command, "note": "files gemma-ocr wrote here (by: which command); a command "
                "replaces only its own, unchanged since", "files": {k: {"by": self.command, **files[k]}
                                                                    for k in sorted(files)}}
        atomic_write_json(folder / MANIFEST, data)

    def record(self, names: Iterable[str]) -> None:
        """Add the files ``names`` (written now) to the folder's manifest, with their size and time."""
        root = self.real
        files = self.manifest()
        for name in names:
            path = root / name
            if path.is_file():
                files[Path(name).as_posix()] = _stamp(path)
        self._write_manifest(root, {k: v for k, v in files.items() if (root / k).is_file()})

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A hidden empty folder beside the output (removed afterwards, whatever happens)."""
        real = self.real
        real.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{real.name}.partial-", dir=real.parent))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged: str | os.PathLike[str], inputs: NamedPaths = {}) -> list[Path]:
        """Move every file of the folder ``staged`` into the output folder (beside what is there), then list them in
        its manifest. Refused in one line, before anything moves, when one of them would replace a file the project
        did not write (or, without ``overwrite``, any file) or an input. Returns the files' new paths."""
        staged = Path(staged)
        names = [p.relative_to(staged).as_posix() for p in sorted(staged.rglob("*")) if p.is_file()]
        names = [n for n in names if n != MANIFEST]
        replaced = self.check_files(names, inputs)
        if replaced:
            log.info("replacing %d files an earlier %s wrote in %s: %s", len(replaced), self.command, self.path,
                     listed(replaced))
        fix_modes(staged)
        real = self.real
        real.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = real / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / name, target)
        self.record(names)
        return [self.path / n for n in names]

    @contextlib.contextmanager
    def writing(self, inputs: NamedPaths = {}) -> Iterator[Path]:
        """A staging folder to write the outputs into; on success they are moved into the folder (:meth:`publish`)."""
        self.check_place(inputs, whole=False)
        with self.staging() as staged:
            yield staged
            self.publish(staged, inputs)

    def replace(self, staged: str | os.PathLike[str], inputs: NamedPaths = {}) -> list[str]:
        """Put the complete folder ``staged`` in place of the output folder, with a manifest of its files and
        the user's modes; the previous folder goes only if it is still all the project's. Returns the names
        of the files replaced (logged)."""
        staged = Path(staged)
        self.check_replace(inputs)  # again: files may have come since the work started
        previous = self._entries() if self.path.is_dir() else []
        files = {p.relative_to(staged).as_posix(): p for p in sorted(staged.rglob("*")) if p.is_file()}
        files.pop(MANIFEST, None)
        fix_modes(staged)
        self._write_manifest(staged, {rel: _stamp(p) for rel, p in files.items()})
        fix_modes(staged / MANIFEST)
        if previous:
            replaced = [n for n in previous if (self.real / n).is_file()]
            log.info("replacing %d files an earlier %s wrote in %s: %s", len(replaced), self.command, self.path,
                     listed(replaced))
        else:
            replaced = []
        real = self.real
        old = None
        if real.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{real.name}.old-", dir=real.parent))
            os.replace(real, old)  # a rename over the empty placeholder folder
        try:
            os.replace(staged, real)
        except OSError:
            if old is not None:
                os.replace(old, real)  # put the previous folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return replaced


def output_file(path: str | os.PathLike[str], flag: str, command: str, inputs: NamedPaths = {}) -> OutputFolder:
    """Before writing the one file ``path``: refuse it when it is an input, or exists and the project did not write
    it there (a file of the user's, another command's output); the folder to :meth:`~OutputFolder.record` it in
    once written, so that a rerun of ``command`` may replace it."""
    target = Path(path)
    folder = OutputFolder(target.parent, flag, command, overwrite_flag=None)
    folder.check_files([target.name], inputs)
    return folder
