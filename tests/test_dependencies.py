"""Every third-party package the library imports is declared in pyproject.toml (a dependency or an extra)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROVIDED = {"triton": "comes with torch's CUDA builds; the fast path only looks for it"}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {re.split(r"[\[<>=!~; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def imported_modules() -> dict[str, str]:
    """Top-level module -> the first file that imports it, for every import in lib/gemma_ocr."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "lib" / "gemma_ocr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    known = declared()
    dists = packages_distributions()
    missing = []
    for module, where in imported_modules().items():
        if module in sys.stdlib_module_names or module == "gemma_ocr" or module in PROVIDED:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & known:
            missing.append(f"{module} ({where})")
    assert missing == []
