"""The deprecation watch (tests/helpers/deprecation_watch.py): a deprecated call of ours fails its test, a dependency's own does not.

A pytest run in a subprocess on a tiny project with this repository's pyproject settings: its ``ours/`` folder
stands for lib/gemma_ocr and calls a real deprecated API (Optuna's ``JournalFileStorage``, deprecated since
4.0) and a dependency's deprecated function whose warning names the dependency's own line (stacklevel 1, as
many libraries do, and which an ``error::...:gemma_ocr`` filter would miss); ``thirdparty/`` stands for a
dependency, making the same calls internally.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.helpers import deprecation_watch
from pathlib import Path
from tests.helpers.deprecation_watch import *  # noqa: F401,F403

deprecation_watch.OURS = (Path(__file__).resolve().parents[1] / "ours",)  # ours by its files' paths
deprecation_watch.OUR_PACKAGES = ()
"""

OURS = """
import warnings

import optuna
import thirdparty.helper


def open_journal(path):
    return optuna.storages.JournalFileStorage(str(path))  # deprecated since Optuna 4.0: JournalFileBackend


def through_a_dependency(path):
    return thirdparty.helper.open_journal(path)


def deprecation_we_filter_ourselves(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return open_journal(path)


def old_style(path):
    return thirdparty.helper.old_api()


def swallowed(path):
    try:
        warnings.warn("old", FutureWarning)  # ours too; an except around it must not hide it
    except Exception:
        pass
"""

OURS_JOURNAL_CALL = "return optuna.storages.JournalFileStorage(str(path))  # deprecated since Optuna 4.0: JournalFileBackend"

THIRDPARTY = """
import warnings

import optuna


def open_journal(path):
    return optuna.storages.JournalFileStorage(str(path))


def old_api():
    warnings.warn("old_api is deprecated", DeprecationWarning)  # stacklevel 1: names this line, not the caller


def new_api():
    return old_api()
"""

TESTS = """
import warnings

import pytest

from ours import calls


@pytest.fixture
def journal_in_setup(tmp_path):
    return calls.open_journal(tmp_path / "setup.log")


def test_ours(tmp_path):
    calls.open_journal(tmp_path / "a.log")


def test_in_setup(journal_in_setup):
    pass


def test_dependency_internal(tmp_path):
    calls.through_a_dependency(tmp_path / "b.log")


def test_stacklevel_naming_the_dependency():
    calls.old_style(None)


def test_dependency_internal_stacklevel_one():
    import thirdparty.helper

    calls.thirdparty.helper.new_api()


def test_filtered_by_our_code(tmp_path):
    calls.deprecation_we_filter_ourselves(tmp_path / "c.log")


def test_expected_by_the_test(tmp_path):
    with pytest.warns(FutureWarning):
        calls.open_journal(tmp_path / "d.log")


def test_in_a_thread(tmp_path):
    import threading

    t = threading.Thread(target=calls.open_journal, args=(tmp_path / "e.log",))
    t.start()
    t.join()


def test_swallowed():
    calls.swallowed(None)


def test_under_captured_warnings(tmp_path):
    import logging

    logging.captureWarnings(True)  # as the main job's run log does: warnings go to the py.warnings logger
    try:
        calls.open_journal(tmp_path / "f.log")
    finally:
        logging.captureWarnings(False)
"""


def test_deprecated_calls_of_ours_fail_their_test_and_a_dependencys_own_do_not(tmp_path):
    if not hasattr(optuna.storages, "JournalFileStorage"):
        pytest.skip("this Optuna no longer has the deprecated JournalFileStorage the test calls")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "__init__.py").write_text("")
    (tmp_path / "ours" / "calls.py").write_text(textwrap.dedent(OURS))
    (tmp_path / "thirdparty").mkdir()
    (tmp_path / "thirdparty" / "__init__.py").write_text("")
    (tmp_path / "thirdparty" / "helper.py").write_text(textwrap.dedent(THIRDPARTY))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "tests" / "test_tiny.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "tests" / "test_at_import.py").write_text(
        "from ours import calls\n\ncalls.swallowed(None)\n\n\ndef test_nothing():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
         "--confcutdir", str(tmp_path), "-p", "no:cacheprovider", "-q", "-rA", "-o", "addopts=", "--continue-on-collection-errors", str(tmp_path / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    outcome = {}
    for line in out.splitlines():
        for word in ("PASSED", "FAILED", "ERROR"):
            if line.startswith(word + " tests/"):
                name = line.split()[1]
                outcome[name.split("::")[1] if "::" in name else name] = word
    assert outcome == {
        "test_ours": "FAILED",
        "test_in_setup": "ERROR",
        "test_dependency_internal": "PASSED",
        "test_stacklevel_naming_the_dependency": "FAILED",
        "test_dependency_internal_stacklevel_one": "PASSED",
        "tests/test_at_import.py": "ERROR",
        "test_filtered_by_our_code": "PASSED",
        "test_expected_by_the_test": "PASSED",
        "test_in_a_thread": "FAILED",
        "test_swallowed": "FAILED",
        "test_under_captured_warnings": "FAILED",
    }, out
    # the failure names the warning, our line that made the call and the dependency's line that warned
    ours = str(tmp_path / "ours" / "calls.py")
    assert "FutureWarning: JournalFileStorage has been deprecated" in out, out
    line = {text.strip(): n for n, text in enumerate(textwrap.dedent(OURS).splitlines(), 1)}
    journal, old_style = line[OURS_JOURNAL_CALL], line["return thirdparty.helper.old_api()"]
    assert f"our call: {ours}:{journal}\n    raised at: {Path(optuna.__file__).parent}" in out, out
    assert f"our call: {ours}:{old_style}\n    raised at: {tmp_path / 'thirdparty' / 'helper.py'}:" in out, out
