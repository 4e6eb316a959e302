"""Output locations that refuse writes: a read-only folder and a nearly full file system (a small tmpfs)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "64k", readonly: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (needs root); the test is skipped where it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'needs root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(where: Path) -> Iterator[Path]:
    """A folder this process cannot write in: a read-only tmpfs as root, else a folder without write permission."""
    if os.geteuid() == 0:
        with small_tmpfs(where, readonly=True):
            yield where
        return
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o555)
    try:
        yield where
    finally:
        where.chmod(0o755)
