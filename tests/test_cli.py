"""One command line: the `gemma-ocr` console script runs the same main() as each core/*.py program."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig

import pytest

from tests.helpers.programs import REPO, assert_one_line_error, run_cli
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


#: What a command needs before a flag is looked at (its positional and required arguments).
POSITIONAL = {"import": ["scans/"], "transcribe": ["a.png"], "serve": ["models/x"], "count-score": ["--input", "a", "--output", "b"]}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_refuses_a_bad_flag_in_one_line_before_any_work(name, monkeypatch, tmp_path):
    """Every program reads its flags through the configuration layer's parsers: a mistyped flag (serve hands
    unknown flags to its engine: a bad value there) is one error line naming it, and nothing runs."""
    import importlib

    from gemma_ocr.errors import GemmaOcrError

    module = importlib.import_module(f"gemma_ocr.commands.{COMMANDS[name][0]}")
    monkeypatch.chdir(tmp_path)  # nothing is written here
    argv, expected = ["--port", "eighty"], r"^--port must be an integer, got 'eighty'$"
    if name != "serve":
        argv, expected = ["--no-such-setting", "1"], r"^unknown flag --no-such-setting( \(see --help\))?$"
    monkeypatch.setattr(sys, "argv", [name, *POSITIONAL.get(name, []), *argv])
    with pytest.raises(GemmaOcrError, match=expected):
        module.main()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "argv", "line"), [
    ("tiny-model", ["--pretrain", "--lines", "0"], "--lines must be >= 1, got 0"),
    ("tiny-model", ["--output-dir", "models/tiny-gemma3-reader"], "--output-dir models/tiny-gemma3-reader holds the "
                                                                  "shipped reader: a random model goes elsewhere"),
    ("khmer generate", ["--max-digits", "9"], "--max-digits must be in [1, 8], got 9"),
    ("khmer generate", ["--height", "8"], "--height must be >= 16, got 8"),
    ("merge", ["--backend", "pef"], "--backend must be one of peft, unsloth, got 'pef'; did you mean 'peft'?"),
    ("split", ["--seed", "x"], "--seed must be an integer, got 'x'"),
    ("split", ["--non-test-ratio", "1:"], "--non-test-ratio must be a fraction such as 0.2, 1/6 or 1:5"),
    ("synth", ["--n-samples", "many"], "--n-samples must be an integer, got 'many'"),
    ("pipeline", ["--stages", "data", "trian"], "--stages item 2 must be one of data, split, baseline, search, train"),
])
def test_a_bad_value_is_one_line_naming_the_flag(name, argv, line, monkeypatch, tmp_path):
    import importlib

    from gemma_ocr.errors import GemmaOcrError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(GemmaOcrError) as e:
        importlib.import_module(f"gemma_ocr.commands.{COMMANDS[name][0]}").main()
    assert str(e.value).startswith(line), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_settings_of_merge_tiny_model_and_khmer_generate_keep_their_flags():
    from gemma_ocr.commands.khmer_generate import GenerateArguments
    from gemma_ocr.commands.merge import MergeArguments
    from gemma_ocr.commands.tiny_model import TinyModelArguments
    from gemma_ocr.khmer_digits.generator import GeneratorConfig
    from gemma_ocr.modeling.reader import ReaderRecipe
    from gemma_ocr.flags import ConfigParser

    merge, _ = ConfigParser(MergeArguments, config_file=False).parse_settings(
        ["--lora_dir", "a", "--output-dir", "b", "--no-verify", "--skip-disk-check", "--overwrite"])
    assert (str(merge.lora_dir), str(merge.output_dir), merge.verify, merge.skip_disk_check, merge.overwrite) == (
        "a", "b", False, True, True)
    tiny, recipe, _ = ConfigParser([TinyModelArguments, ReaderRecipe], config_file=False).parse_settings(
        ["--pretrain", "--lines", "40", "--max-steps", "2", "--anneal-steps", "0", "--threads", "1", "--seed", "3",
         "--target-cer", "0.5", "--curve-every", "0", "--work-dir", "w"])
    assert tiny.pretrain and str(tiny.work_dir) == "w"
    assert recipe == ReaderRecipe(lines=40, max_steps=2, anneal_steps=0, seed=3, target_cer=0.5, curve_every=0)
    out, generator, _ = ConfigParser([GenerateArguments, GeneratorConfig], config_file=False).parse_settings(
        ["--n-train", "4", "--n-val", "2", "--height", "40", "--width", "160", "--export-json", "v.json",
         "--export-split", "train"])
    assert (generator.n_train, generator.n_val, generator.image_height, generator.image_width) == (4, 2, 40, 160)
    assert (str(out.export_json), out.export_split) == ("v.json", "train")


def test_a_closed_output_pipe_ends_a_program_without_a_traceback(tmp_path):
    """`count_score.py ... | head -1`: the reader has gone before the program prints; it stops with 141 (128 +
    SIGPIPE), no traceback, and what it wrote before printing is whole."""
    from gemma_ocr.scoring.results import ScoringConfig, build_document

    samples = [{"index": i, "image_path": f"/d/{i}.png", "label": "12 34", "prediction": "12 3", "status": "ok"}
               for i in range(4)]
    (tmp_path / "r.json").write_text(json.dumps(build_document(samples, "m", ScoringConfig(ci_resamples=20))))
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "PYTHONUNBUFFERED": "1"}
    read, write = os.pipe()
    os.close(read)  # nobody reads the program's output
    proc = subprocess.run([sys.executable, str(REPO / "core" / "count_score.py"), "--input", str(tmp_path / "r.json"),
                           "--output", str(tmp_path / "n.json")], stdout=write, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=120)
    os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "n.json").read_text())["total_samples"] == 4
