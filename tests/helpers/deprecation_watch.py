"""Deprecations caused by our own calls fail the test that made them (a pytest plugin, loaded by conftest.py).

A DeprecationWarning, PendingDeprecationWarning or FutureWarning announces the next release that breaks a
call. When *our* code (lib/gemma_ocr, core/) made the call, the test that ran it fails, naming the warning
and our line; a warning a dependency raises about its own internal calls (transformers calling torch,
TRL calling transformers) is left to pytest's warnings summary: we cannot fix it, only its next release.

How a warning is attributed (the design, and why not only ``filterwarnings``):

* ``error::DeprecationWarning:gemma_ocr`` in pyproject.toml matches the module the warning is *attributed*
  to, which is right only when the library passed the right ``stacklevel``. Many do not (Optuna's
  ``optuna_warn`` on Python < 3.12 attributes its FutureWarnings to Optuna's own files; pandas, TRL and
  decorators add frames), and an exception raised at the warning's site can be caught by an ``except`` of
  ours or the library's and never reach the test.
* So pyproject.toml only makes these three categories *shown* (``always``/``default``; the ``default``
  action's once-per-location registry is reset for every test by pytest's ``catch_warnings``), and this
  plugin replaces ``warnings.showwarning`` (the documented hook) while each setup/call/teardown phase runs
  and while test files are imported. The hook runs synchronously in the warning thread, so the real call
  stack is there: from the frame that issued the warning, the issuing package's own frames, the standard
  library's and generated code's (``<string>`` dataclass ``__init__``) are skipped; the first frame left
  is the caller. The warning is ours when that caller is a module of ``gemma_ocr`` or a file under
  lib/gemma_ocr or core/ (stacklevel plays no part), or when the library's stacklevel names a line of ours.
  The hook then hands the warning on to the previous ``showwarning`` (pytest's record). Where our code has
  ``logging.captureWarnings(True)`` on (the main job's run log), a handler on ``py.warnings`` does the same.
* After the phase, the test fails (or errors in setup/teardown, or its file fails to collect) with one
  entry per warning: category, message, our file:line and the dependency's call site. The failure comes
  after the phase, so no ``except`` can swallow it.

Not caught, by design: a warning inside ``pytest.warns``/``catch_warnings(record=True)`` (they install
their own recorder: the test expects it), one our code filters out itself, and one raised by a dependency
that a *second* dependency called on our behalf (the caller is then the second dependency). A warning a C
function raises counts for the Python frame that called it (ours when our line called it directly). Subprocesses
the tests start (servers, CLIs) are not affected: the filters and this hook live in the test process only.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import currentframe
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Code in these packages or in files under these folders is ours: a deprecated call made from it fails the test.
OUR_PACKAGES: tuple[str, ...] = ("gemma_ocr",)
OURS: tuple[Path, ...] = (REPO / "lib" / "gemma_ocr", REPO / "core")
#: The categories that announce a break in a coming release.
ANNOUNCING = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_STDLIB = frozenset(sys.stdlib_module_names)
_THIS = __name__.partition(".")[0]
#: Frames of the warning's delivery, skipped before the one that issued it (``_py_warnings``: Python 3.14's).
_MACHINERY = frozenset({"warnings", "_py_warnings", "logging", _THIS})


@dataclass(frozen=True)
class DeprecatedCall:
    """A warning our code caused: what it said, our line that made the call, the dependency's line that warned."""

    category: str
    message: str
    ours: str
    issued_at: str

    def __str__(self) -> str:
        return f"{self.category}: {self.message}\n    our call: {self.ours}\n    raised at: {self.issued_at}"


def _package(frame: FrameType) -> str:
    """The top-level package a frame's code belongs to ('' when unknown)."""
    name = frame.f_globals.get("__name__")
    return name.partition(".")[0] if isinstance(name, str) else ""


def _is_our_file(filename: str) -> bool:
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(root) for root in OURS)


def _is_ours(frame: FrameType) -> bool:
    """Whether ``frame`` runs our code: a module of our package (whatever its path looks like) or a file of ours."""
    return _package(frame) in OUR_PACKAGES or _is_our_file(frame.f_code.co_filename)


def _where(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def cause(frame: FrameType | None) -> tuple[FrameType, FrameType] | None:
    """(our frame, issuing frame) when the warning issued from ``frame`` outward was caused by our call, else None.

    ``frame`` is the innermost frame to consider (the warnings machinery's own frames and this module's are
    skipped first). A warning issued by our own code (or by a C function our line called) is ours too.
    """
    while frame is not None and _package(frame) in _MACHINERY:
        frame = frame.f_back
    if frame is None:
        return None
    issuer = frame
    if _is_ours(issuer):
        return issuer, issuer
    library = _package(issuer)
    caller = issuer.f_back
    while caller is not None:
        package = _package(caller)
        synthetic = caller.f_code.co_filename.startswith("<") and not package
        if not (package == library or package in _STDLIB or synthetic):
            break
        caller = caller.f_back
    if caller is not None and _is_ours(caller):
        return caller, issuer
    return None


class Watch:
    """Collects the announcing warnings our calls cause while installed as ``warnings.showwarning``."""

    def __init__(self) -> None:
        self.found: list[DeprecatedCall] = []
        self._lock = threading.Lock()

    def check(self, message: Warning | str, category: type[Warning], filename: str, lineno: int) -> None:
        """Record the warning when our call caused it (by the call stack, or by where the library attributed it)."""
        if not issubclass(category, ANNOUNCING):
            return
        frames = cause(currentframe())
        if frames is not None:
            ours, issued_at = _where(frames[0]), _where(frames[1])
        elif _is_our_file(filename):  # the library's stacklevel names our line (a caller the stack walk skipped)
            ours = issued_at = f"{filename}:{lineno}"
        else:
            return
        found = DeprecatedCall(category.__name__, str(message), ours, issued_at)
        with self._lock:
            if found not in self.found:
                self.found.append(found)

    @contextmanager
    def installed(self) -> Iterator[list[DeprecatedCall]]:
        """While the block runs, every shown warning is checked, then passed on to the previous hook."""
        previous = warnings.showwarning

        def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
            try:
                self.check(message, category, filename, lineno)
            finally:
                previous(message, category, filename, lineno, file, line)

        captured = _CapturedWarnings(self)
        warnings.showwarning = showwarning
        logging.getLogger("py.warnings").addHandler(captured)
        try:
            yield self.found
        finally:
            logging.getLogger("py.warnings").removeHandler(captured)
            warnings.showwarning = previous


class _CapturedWarnings(logging.Handler):
    """``logging.captureWarnings(True)`` (the main job's run log) replaces ``showwarning`` with logging's, which
    logs each warning to the ``py.warnings`` logger, still in the warning's thread: this handler reads the warning
    from the frame of logging's ``showwarning`` and checks it like the hook."""

    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        frame = currentframe()
        while frame is not None and not (frame.f_code.co_name == "_showwarning" and _package(frame) == "logging"):
            frame = frame.f_back
        if frame is not None:
            seen = frame.f_locals
            self.watch.check(seen["message"], seen["category"], seen["filename"], seen["lineno"])


def report(found: list[DeprecatedCall]) -> str:
    lines = [f"{len(found)} deprecated call(s) of ours: fix the call (the next release of the dependency breaks it)"]
    lines += [str(f) for f in found]
    return "\n".join(lines)


@contextmanager
def _failing_phase() -> Iterator[None]:
    watch = Watch()
    with watch.installed() as found:
        yield
    if found:
        pytest.fail(report(found), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    with _failing_phase():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    with _failing_phase():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    with _failing_phase():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A test file whose import makes a deprecated call of ours fails to collect."""
    watch = Watch()
    with watch.installed() as found:
        collected = yield
    if found and collected.outcome != "failed":
        collected.outcome = "failed"
        collected.longrepr = report(found)
    return collected


__all__ = ["pytest_runtest_setup", "pytest_runtest_call", "pytest_runtest_teardown", "pytest_make_collect_report"]
