"""Installing a missing Debian package for a test that needs the real thing (a database server, a font)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable


def apt_install(package: str, present: Callable[[], bool]) -> str:
    """Install ``package`` with apt-get when ``present()`` is false (needs root); '' once present, else why not."""
    if present():
        return ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{package} is not installed and cannot be installed here (needs root and apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return f"apt-get could not install {package}: {proc.stderr.strip()[-300:]}"
    return "" if present() else f"{package} installed, but what the test needs is still not found"
