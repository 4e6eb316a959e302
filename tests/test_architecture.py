"""The shape of lib/gemma_ocr: no import cycles, modules and functions small enough to read, imports at the top.

Read as text (nothing imported or run), so a failure names the file and line:

- the import graph of the package's modules (every import, those inside functions too, but not those under
  ``if TYPE_CHECKING:``) has no cycle;
- no function is longer than :data:`MAX_FUNCTION_LINES` lines, and no module longer than :data:`MAX_MODULE_LINES`
  unless a ``# size:`` comment near its top says why;
- an import inside a function has a comment on its line, or above it (over a block of imports), saying why it is not
  at the top (an optional extra, an import order a library needs, the start-up time of a command);
- a package's ``__init__.py`` holds its docstring only, so each name has one home and importing a package is cheap.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PACKAGE = LIB / "gemma_ocr"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
SIZE_REASON = "# size:"  # within the first REASON_WITHIN lines of a module longer than MAX_MODULE_LINES
REASON_WITHIN = 40


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, skipping ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (n for orelse in node.orelse for n in imports(ast.Module(body=[orelse], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from imports(node)


def imported_modules(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The project modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: {m for node in imports(parse(path)) for m in imported_modules(name, path, node)}
            for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_is_seen():
    assert {"gemma_ocr.settings", "gemma_ocr.evaluation", "gemma_ocr.serving.app"} <= set(MODULES)


def test_no_function_longer_than_the_limit():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(LIB.parent)}:{node.lineno}: {node.name} "
                                f"is {node.end_lineno - first + 1} lines")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_no_module_longer_than_the_limit_without_a_reason():
    long = []
    for path in MODULES.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        reasons = [line for line in lines[:REASON_WITHIN] if line.startswith(SIZE_REASON) and
                   len(line) > len(SIZE_REASON) + 10]
        if len(lines) > MAX_MODULE_LINES and not reasons:
            long.append(f"{path.relative_to(LIB.parent)} is {len(lines)} lines")
    assert long == [], f"modules over {MAX_MODULE_LINES} lines with no '{SIZE_REASON} <why>' line at the top:\n" + \
        "\n".join(long)


def _has_comment(line: str) -> bool:
    return "#" in line and len(line.split("#", 1)[1].strip()) > 3


def _comment_above(lines: list[str], index: int) -> bool:
    """A comment ends the lines above ``lines[index]``, past any imports right above it (a block it explains)."""
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("import ", "from ")):
        index -= 1
    return index >= 0 and lines[index].strip().startswith("#")


def test_imports_inside_functions_say_why():
    unexplained = []
    for path in MODULES.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(parse(path)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in imports(fn):
                here = lines[node.lineno - 1:node.end_lineno]
                if not any(_has_comment(line) for line in here) and not _comment_above(lines, node.lineno - 1):
                    unexplained.append(f"{path.relative_to(LIB.parent)}:{node.lineno}: {here[0].strip()}")
    assert unexplained == [], "imports inside functions with no comment saying why they are not at the top:\n" + \
        "\n".join(unexplained)


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.relative_to(LIB)))
def test_package_init_holds_its_docstring_only(init):
    body = parse(init).body
    rest = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            and not (isinstance(n, ast.Assign) and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["__version__"])]
    allowed = {"gemma_ocr/__init__.py"}  # the package root names its version and the one error type users catch
    assert rest == [] or str(init.relative_to(LIB)) in allowed, f"{init.relative_to(LIB)} holds more than a docstring"


def test_the_architecture_page_names_every_package_and_only_those():
    """docs/architecture.md's package table matches the tree: a package added or moved is described there."""
    page = (LIB.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^\| `(\w+)/` \|", page, flags=re.M))
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {"commands"}
    assert named == packages, f"named on the page only: {sorted(named - packages)}; in lib only: {sorted(packages - named)}"
    top = re.search(r"^\| top level \| (.+) \|$", page, flags=re.M)
    modules = set(re.findall(r"`(\w+)`", top.group(1))) - {"commands"}
    assert modules <= {p.stem for p in PACKAGE.glob("*.py")}, "the top-level row names a module that is not there"
