"""Which installed releases differ from a lock file: ``python scripts/compare_lock.py requirements/lock.txt``.

Prints one line per package whose installed version is not the locked one (newer, older, or not locked), so
a CI log says which new releases a drift run tested. Exits 0 whatever it finds.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.split(";", 1)[0].strip()
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/compare_lock.py LOCK_FILE", file=sys.stderr)
        return 2
    pins = locked_versions(Path(argv[0]))
    installed = {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}
    changed = sorted((name, pins.get(name), version) for name, version in installed.items()
                     if pins.get(name) != version and name not in ("pip", "setuptools", "wheel", "gemma-ocr"))
    print(f"against {argv[0]}: {len(changed)} installed releases differ" + (":" if changed else " (the newest are the locked)"))
    for name, locked, version in changed:
        print(f"  {name} {locked or 'not locked'} -> {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
