"""The library imports only public APIs of the libraries it builds on (a release may change anything else).

Private means: a module path with a component that starts with ``_``, an imported name that starts with ``_``,
or a library's command-line implementation (``transformers.cli``: the ``transformers serve`` command's code, whose
internals changed between releases and broke the embedded server). The project's own modules (``gemma_ocr``)
and the standard library are out of scope. Documented extension points (``AttentionInterface.register``...) are
public names and pass.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PRIVATE_PACKAGES = ("transformers.cli",)  # CLI implementations, not APIs
OWN = "gemma_ocr"


def third_party(module: str) -> bool:
    root = module.split(".")[0]
    return root not in (OWN, "__future__") and root not in sys.stdlib_module_names


def private_imports(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, what) of each private import of a third-party library in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            paths = [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            paths = [(node.module, f"{node.module}.{alias.name}") for alias in node.names]
            found += [(node.lineno, f"from {node.module} import {alias.name}: a private name")
                      for alias in node.names if alias.name.startswith("_") and third_party(node.module)]
        else:
            continue
        for module, full in paths:
            if not third_party(module):
                continue
            if any(part.startswith("_") for part in module.split(".")):
                found.append((node.lineno, f"{module}: a private module"))
            elif any(full == p or full.startswith(p + ".") for p in PRIVATE_PACKAGES):
                found.append((node.lineno, f"{full}: a library's command-line implementation, not an API"))
    return found


def test_the_library_imports_no_private_module_or_name():
    problems = [f"{path.relative_to(LIB.parent)}:{line}: {what}"
                for path in sorted(LIB.rglob("*.py"))
                for line, what in private_imports(path.read_text(encoding="utf-8"), str(path))]
    assert not problems, "private imports (use a public API instead):\n" + "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from transformers.cli.serving.utils import DirectStreamer", "command-line implementation"),
    ("from transformers import cli", "command-line implementation"),
    ("import transformers.cli.serving", "command-line implementation"),
    ("from transformers.utils import _LazyModule", "a private name"),
    ("from torch._dynamo import config", "a private module"),
    ("import torch._C", "a private module"),
    ("def f():\n    from optuna.storages._heartbeat import x", "a private module"),
])
def test_private_imports_are_found_with_their_line(source, expected):
    found = private_imports(source)
    assert len(found) == 1 and expected in found[0][1] and found[0][0] == source.count("\n") + 1, found


@pytest.mark.parametrize("source", [
    "from __future__ import annotations",
    "from gemma_ocr._internal import _helper",
    "from collections import _OrderedDictKeysView",
    "import os",
    "from transformers import AttentionInterface, AttentionMaskInterface",
    "from transformers.masking_utils import sdpa_mask",
    "from . import _private",
])
def test_public_stdlib_and_own_imports_pass(source):
    assert private_imports(source) == []
