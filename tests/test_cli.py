"""One command line: the `gemma-ocr` console script runs the same main() as each core/*.py program."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO, assert_one_line_error, run_cli
from gemma_ocr.cli import COMMANDS

SEED_PROGRAMS = ("sft_gemma.py", "hyperparameter_search.py", "analyze_hyperparam_results.py", "evaluate.py",
                 "count_score.py", "gemma_adapter_merge.py", "split_dataset.py", "data_analysis/train_test_data.py",
                 "data_analysis/analyze_empty_predictions.py", "khmer_digits/phase3_hyperparameter_tuning.py")


def gemma_ocr(*args: str, cwd=REPO, executable: list[str] | None = None, env: dict | None = None):
    cmd = executable or [sys.executable, "-m", "gemma_ocr"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300)


def test_every_program_of_the_seed_is_a_command():
    scripts = {script for _, script, _ in COMMANDS.values()}
    assert set(SEED_PROGRAMS) <= scripts
    assert scripts == {str(p.relative_to(REPO / "core")) for p in (REPO / "core").rglob("*.py")}


@pytest.mark.parametrize("name", COMMANDS)
def test_core_programs_are_thin_entry_points_calling_the_commands_main(name):
    module, script, _ = COMMANDS[name]
    source = (REPO / "core" / script).read_text()
    tree = ast.parse(source)
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert (f"gemma_ocr.commands.{module}", "main") in imports and ("gemma_ocr.cli", "run") in imports
    code_lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith(("#", '"', "`"))]
    assert len(code_lines) <= 5, code_lines  # the imports and `if __name__ == "__main__": run(main)`
    assert callable(__import__(f"gemma_ocr.commands.{module}", fromlist=["main"]).main)


def test_command_and_core_program_give_the_same_result(tmp_path):
    src = tmp_path / "results.json"
    src.write_text(json.dumps({"samples": [{"image_path": "a.png", "label": "Hello world", "prediction": "hello  world",
                                            "status": "ok"}]}))
    core = run_cli("count_score.py", "--input", str(src), "--output", str(tmp_path / "core.json"))
    cmd = gemma_ocr("count-score", "--input", str(src), "--output", str(tmp_path / "cmd.json"))
    assert cmd.returncode == 0, cmd.stderr
    assert cmd.stdout.replace("cmd.json", "core.json") == core.stdout
    assert json.loads((tmp_path / "cmd.json").read_text()) == json.loads((tmp_path / "core.json").read_text())


def test_subcommand_usage_and_errors():
    listing = gemma_ocr("--help")
    assert listing.returncode == 0 and all(name in listing.stdout for name in COMMANDS)
    assert gemma_ocr().returncode == 2
    assert_one_line_error(gemma_ocr("trian"), "unknown command 'trian'; did you mean 'train'?")
    assert_one_line_error(gemma_ocr("khmer"), "'khmer' needs a command: khmer generate, khmer tune")
    tune = gemma_ocr("khmer", "tune", "--help")
    assert tune.returncode == 0 and tune.stdout.startswith("usage: gemma-ocr khmer tune")
    proc = gemma_ocr("train", "--lora-rr", "8")
    assert_one_line_error(proc, "unknown flag --lora-rr; did you mean --lora-r?")


@pytest.mark.slow
def test_pip_install_editable_installs_the_console_script(tmp_path):
    """`pip install -e .` puts `gemma-ocr` on the PATH (offline: this interpreter's setuptools builds it)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = sysconfig.get_paths()["purelib"]  # pip and setuptools of the interpreter running the tests
    env = {**os.environ, "PYTHONPATH": site}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-e", str(REPO)], check=True, env=env, timeout=300, capture_output=True)
    script = venv / "bin" / "gemma-ocr"
    assert script.is_file()
    proc = gemma_ocr("split", "--help", executable=[str(script)], env={"PYTHONPATH": site})
    assert proc.returncode == 0 and proc.stdout.startswith("usage: gemma-ocr split"), proc.stderr
