"""The configuration layer (gemma_ocr.settings): one coercion, layered precedence, generated flags, one-line errors."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import pytest

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.config_files import read_config_file
from gemma_ocr.flags import ConfigParser
from gemma_ocr.settings import FieldError, Layer, Mismatch, Settings, coerce, did_you_mean, resolve, unknown_key


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize(("value", "tp", "expected"), [
    ("2e-4", float, 2e-4), (3, float, 3.0), ("16", int, 16), (16.0, int, 16), ("-1", int, -1),
    ("true", bool, True), ("No", bool, False), (False, bool, False),
    ("none", int | None, None), (None, int | None, None), ("7", int | None, 7),
    (1, int | float, 1), (0.25, int | float, 0.25), ("0.25", int | float, 0.25), ("4", int | float, 4),
    ("auto", bool | Literal["auto"], "auto"), ("false", bool | Literal["auto"], False),
    ("ckpt/checkpoint-4", bool | str | None, "ckpt/checkpoint-4"), ("true", bool | str | None, True),
    ("no", str | bool, "no"),  # beside str, only true/false are bools
    ("a, b", list[str], ["a", "b"]), ('["a", "b"]', list[str], ["a", "b"]), (["1", 2], list[int], [1, 2]),
    ("all-linear", None | str | list[str], "all-linear"), ('["q_proj"]', None | str | list[str], ["q_proj"]),
    ('{"num_cycles": 2}', dict | str | None, {"num_cycles": 2}), ("ds.json", dict | str | None, "ds.json"),
    ({"k": 1}, dict[str, Any], {"k": 1}), ("blue", Color | str, "blue"), (Color.RED, Color, "red"),
    ("data.json", str | os.PathLike[str], "data.json"), (("u",), Sequence[str], ["u"]),
    (0.5, float | list[float] | None, 0.5), ([0.5, "1"], float | list[float] | None, [0.5, 1.0]),
    ("runs/a", Path, Path("runs/a")), (Path("b"), Path | None, Path("b")), ("null", Path | None, None),
])
def test_coerce_converts_what_text_and_json_mean(value, tp, expected):
    out = coerce(value, tp)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(("value", "tp", "reason"), [
    ("sixteen", int, "must be an integer, got 'sixteen'"),
    (1.5, int, "must be an integer, got 1.5"),
    (True, int, "must be an integer, got True"),
    ("maybe", bool, "must be true or false, got 'maybe'"),
    (5, str, "must be a string, got 5"),
    (math.nan, float, "must be a finite number, got nan"),
    ("-inf", float | None, "must be a finite number, got '-inf'"),
    ("1e999", float, "must be a finite number, got '1e999'"),
    ("purple", Color | str, "must be one of red, blue, got 'purple'"),
    ("bleu", Color, "must be one of red, blue, got 'bleu'; did you mean 'blue'?"),
    ("{oops", dict | str | None, "must be a JSON object (JSON text: "),
    ([1, "x"], list[int], "item 2 must be an integer, got 'x'"),
    ("x", int | float, "must be an integer or a number, got 'x'"),
    ("", Path, "must be a path, got ''"), (3, Path | None, "must be a path or null, got 3"),
    # what a 64-bit integer cannot hold (torch and NumPy take no more), in a file or as text, alone or in a union
    (99999999999999999999999, int, "must be an integer that fits in 64 bits (from -9223372036854775808 to "
                                   "9223372036854775807), got 99999999999999999999999"),
    ("99999999999999999999999", int | None, "must be an integer that fits in 64 bits"),
    (-(2**63) - 1, int, "must be an integer that fits in 64 bits"), (1e30, int, "must be an integer that fits"),
    (float("nan"), float | None, "must be a finite number"),
])
def test_coerce_refuses_with_the_reason(value, tp, reason):
    with pytest.raises(Mismatch) as err:
        coerce(value, tp)
    assert str(err.value).startswith(reason)


@dataclass
class Study(Settings):
    """A settings class like the search's: names, counts, a nested choice."""

    study_name: str = field(default="s", metadata={"help": "study name"})
    n_trials: int = field(default=20, metadata={"help": "trials", "aliases": ["--trials"]})
    timeout: float | None = None
    search_mode: Literal["bayesian", "random", "grid"] = "bayesian"
    resume: bool = False
    show_progress: bool = field(default=True, metadata={"aliases": ["--progress"]})

    def validate(self) -> None:
        super().validate()
        if self.n_trials < 1:
            raise FieldError("n_trials", f"must be >= 1, got {self.n_trials}")


@dataclass
class Fixed:
    """A second class in the same parser (no Settings methods needed)."""

    model_name: str = "m"
    images: Sequence[str] = field(default=(), metadata={"positional": True, "metavar": "IMAGE"})


def test_layers_apply_in_order_and_errors_name_their_layer():
    stored = Layer("study s (stored definition)", {"n_trials": 5, "search_mode": "grid"})
    file = Layer("c.json", {"n_trials": "8", "_comment": "x", "search_space": {}})
    flags = Layer("command line", {"timeout": "60"}, {"timeout": "--timeout"})
    s = resolve(Study, stored, file, flags, ignore={"search_space"})
    assert (s.n_trials, s.search_mode, s.timeout, s.study_name) == (8, "grid", 60.0, "s")
    with pytest.raises(GemmaOcrError, match=r"^c.json: field 'n_trials' must be >= 1, got 0$"):
        resolve(Study, stored, Layer("c.json", {"n_trials": 0}), flags)
    with pytest.raises(GemmaOcrError, match=r"^--trials must be >= 1, got 0$"):
        resolve(Study, Layer("command line", {"n_trials": "0"}, {"n_trials": "--trials"}))
    assert resolve(Study, Layer("c.json", {"n_trials": 0}), Layer("command line", {"n_trials": 3})).n_trials == 3
    with pytest.raises(GemmaOcrError, match=r"^c.json: unknown key 'n_trails'; did you mean 'n_trials'\?$"):
        resolve(Study, Layer("c.json", {"n_trails": 3}))
    with pytest.raises(GemmaOcrError, match=r"^c.json: field 'search_mode' must be one of bayesian, random, grid, "
                                            r"got 'gird'; did you mean 'grid'\?$"):
        resolve(Study, Layer("c.json", {"search_mode": "gird"}))


def test_settings_methods():
    s = Study.from_dict({"n_trials": 3}, source="x.yaml")
    assert s.replace(timeout="5").timeout == 5.0 and s.to_dict()["n_trials"] == 3
    with pytest.raises(GemmaOcrError, match=r"^config: field 'timeout' must be a finite number"):
        s.replace(timeout=math.inf)
    with pytest.raises(FieldError, match="field 'n_trials' must be an integer"):
        Study(n_trials="many").validate()  # a value set from Python


def test_parser_flags_file_and_flags_of_two_classes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_trials: 4\nmodel_name: base\nsearch_space: {}\n")
    parser = ConfigParser([Study, Fixed], ignore_keys={"search_space"})
    parser.add_argument("--dry-run", action="store_true")
    study, fixed, ns = parser.parse_settings(["--config", str(cfg), "a.png", "b.png", "--search_mode", "random",
                                              "--no-progress", "--resume", "--dry-run"])
    assert (study.n_trials, study.search_mode, study.show_progress, study.resume) == (4, "random", False, True)
    assert fixed.model_name == "base" and fixed.images == ["a.png", "b.png"] and ns.dry_run is True
    assert parser.parse_settings(["x", "--trials", "2", "--progress", "false"])[0].n_trials == 2

    # the layers themselves, for a caller that adds one (e.g. a stored definition under the file)
    layers, _ = parser.parse_layers(["--config", str(cfg), "x", "--study-name", "t"])
    file_layer, flag_layer = layers[0]
    assert file_layer.values == {"n_trials": 4} and flag_layer.values == {"study_name": "t"}
    stored = Layer("stored", {"n_trials": 9, "timeout": 30})
    s = resolve(Study, stored, file_layer, flag_layer)
    assert (s.n_trials, s.timeout, s.study_name) == (4, 30.0, "t")


@pytest.mark.parametrize(("argv", "line"), [
    (["x", "--n-trails", "3"], "unknown flag --n-trails; did you mean --n-trials?"),
    (["x", "--timeout"], "--timeout: expected one argument (see --help)"),
    (["x", "--trials", "lots"], "--trials must be an integer, got 'lots'"),
    (["x", "--search-mode", "grd"], "--search-mode must be one of bayesian, random, grid, got 'grd'; did you mean 'grid'?"),
    ([], "the following arguments are required: IMAGE (see --help)"),
])
def test_parser_errors_are_one_line(argv, line):
    with pytest.raises(GemmaOcrError) as err:
        ConfigParser([Study, Fixed]).parse_settings(argv)
    assert str(err.value) == line


def test_a_check_of_a_field_no_layer_set_names_its_flag():
    """validate() may refuse a default because of another setting: the message names the flag to change."""

    @dataclass
    class Window(Settings):
        low: int = 1
        high: int = 10

        def validate(self) -> None:
            if self.high <= self.low:
                raise FieldError("high", f"must be above low ({self.low}), got {self.high}")

    with pytest.raises(GemmaOcrError) as err:
        ConfigParser(Window, config_file=False).parse_settings(["--low", "20"])
    assert str(err.value) == "--high must be above low (20), got 10"


def test_a_file_key_of_no_class_is_refused(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"modle_name": "x"}))
    with pytest.raises(GemmaOcrError, match=rf"^{cfg}: unknown key 'modle_name'; did you mean 'model_name'\?$"):
        ConfigParser([Study, Fixed]).parse_settings(["--config", str(cfg), "x"])


def test_did_you_mean_prefers_the_longer_shared_prefix():
    assert did_you_mean("lora_rank", ["local_rank", "lora_r", "lora_alpha"]) == "; did you mean 'lora_r'?"
    assert did_you_mean("zzz", ["lora_r"]) == ""
    assert did_you_mean("adamw", ["grokadamw", "adamw_torch", "adamw_8bit"]) == "; did you mean 'adamw_torch'?"
    assert str(unknown_key("f", "zzz", ["a", "b"])) == "f: unknown key 'zzz' (known: a, b)"


def test_a_program_without_a_settings_class_has_the_same_errors():
    """ArgumentParser + flag_value: the layer's value check and error lines, for plain argparse flags."""
    from gemma_ocr.flags import ArgumentParser, flag_value

    p = ArgumentParser()
    p.add_argument("--seed", type=flag_value(int), default=42)
    p.add_argument("--ratio", type=flag_value(float, parse=lambda t: float(t.split(":")[0]) / 2))
    p.add_argument("--input", required=True)
    assert p.parse_args(["--input", "a", "--seed", "7", "--ratio", "1:x"]).seed == 7
    assert p.parse_args(["--input", "a", "--ratio", "1:x"]).ratio == 0.5
    for argv, line in [
        (["--input", "a", "--seed", "x"], "--seed must be an integer, got 'x'"),
        (["--input", "a", "--sed", "3"], "unknown flag --sed; did you mean --seed?"),
        (["--input", "a", "--ratio", "y"], "--ratio could not convert string to float: 'y'"),
        (["--input"], "--input: expected one argument (see --help)"),
        ([], "the following arguments are required: --input (see --help)"),
        (["--input", "a", "b"], "unexpected argument 'b' (see --help)"),
    ]:
        with pytest.raises(GemmaOcrError) as err:
            p.parse_args(argv)
        assert str(err.value) == line, argv
    with pytest.raises(GemmaOcrError) as err:  # the same value, through the layer
        ConfigParser([Study, Fixed]).parse_settings(["x", "--trials", "x"])
    assert str(err.value) == "--trials must be an integer, got 'x'"


def test_a_field_reads_text_with_its_parse():
    @dataclass
    class Split(Settings):
        share: float = field(default=0.5, metadata={"parse": lambda t: eval(t.replace(":", "/(1+"), {}) if ":" in t
                                                     else float(t)})

    assert ConfigParser(Split).parse_settings(["--share", "0.25"])[0].share == 0.25
    assert resolve(Split, Layer("f.yaml", {"share": 0.75})).share == 0.75  # a number from a file needs no parse
    with pytest.raises(GemmaOcrError, match=r"^--share could not convert string to float: 'x'$"):
        ConfigParser(Split).parse_settings(["--share", "x"])


def test_flags_left_for_another_program_and_a_light_import(tmp_path):
    import subprocess
    import sys

    p = ConfigParser([Study, Fixed], config_file=False)
    study, _, ns = p.parse_settings(["x", "--trials", "2", "--tensor-parallel-size", "2"], known_only=True)
    assert study.n_trials == 2 and ns.extra == ["--tensor-parallel-size", "2"]
    # the layer itself does not import transformers (a second): only building a ConfigParser does
    code = ("import sys, gemma_ocr.settings, gemma_ocr.flags, gemma_ocr.training.config, gemma_ocr.layout; "
            "assert 'transformers' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "lib")})


@pytest.mark.parametrize(("name", "text", "line"), [
    ("dup.json", '{"n_trials": 4,\n "study_name": "s",\n "n_trials": 8}', "key 'n_trials' is given twice in one object (lines 1 and 3)"),
    ("dup.yaml", "n_trials: 4\nstudy_name: s\nn_trials: 8\n", "key 'n_trials' is given twice in one object (lines 1 and 3)"),
    ("nested.yaml", "n_trials: 4\nsearch_space:\n  lr: {type: float}\n  lr: {type: int}\n", "key 'lr' is given twice"),
    ("nested.json", '{"search_space": {"lr": {"type": "float", "type": "int"}}}', "key 'type' is given twice"),
])
def test_a_key_given_twice_in_a_config_file_is_refused_naming_it(name, text, line, tmp_path):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GemmaOcrError) as err:
        ConfigParser([Study, Fixed], ignore_keys={"search_space"}).parse_settings(["--config", str(path), "x.png"])
    assert str(err.value).startswith(f"{path}: {line}") and "\n" not in str(err.value)
    assert "keep one" in str(err.value)


def test_yaml_merge_keys_still_override_and_the_same_key_in_two_objects_is_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {n_trials: 3, study_name: a}\nrun:\n  <<: *b\n  n_trials: 5\nother: {n_trials: 1}\n")
    assert read_config_file(path)["run"] == {"n_trials": 5, "study_name": "a"}
    json_path = tmp_path / "ok.json"
    json_path.write_text('{"a": {"type": 1}, "b": {"type": 2}}')
    assert read_config_file(json_path) == {"a": {"type": 1}, "b": {"type": 2}}


def test_config_given_twice_is_refused_naming_the_flag(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"n_trials": 4}')
    b.write_text('{"study_name": "x"}')
    for argv in (["x.png", "--config", str(a), "--config", str(b)], [f"--config={a}", "x.png", "--config", str(a)]):
        with pytest.raises(GemmaOcrError, match=r"^--config is given twice \(.*a.json, then .*json\); it takes one file"):
            ConfigParser([Study, Fixed]).parse_settings(argv)
    assert ConfigParser([Study, Fixed]).parse_settings(["--config", str(a), "x.png"])[0].n_trials == 4  # once is fine
    with pytest.raises(GemmaOcrError, match=r"^--config is empty: give a file"):  # an unset variable: no file read
        ConfigParser([Study, Fixed]).parse_settings(["--config", "", "x.png"])


def test_a_value_the_type_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from gemma_ocr.commands.train import main

    big = tmp_path / "big.json"
    big.write_text('{"lora_r": 99999999999999999999999}')
    monkeypatch.setattr("sys.argv", ["sft_gemma.py", "--config", str(big), "--print-config"])
    with pytest.raises(GemmaOcrError, match=rf"^{big}: field 'lora_r' must be an integer that fits in 64 bits"):
        main()
    for key, value, reason in (("data_seed", -1, "must be in [0, 4294967295]"),
                               ("eval_accumulation_steps", -2, "must be >= 1"), ("ddp_timeout", 0, "must be >= 1")):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({key: value}))
        monkeypatch.setattr("sys.argv", ["sft_gemma.py", "--config", str(path), "--print-config"])
        with pytest.raises(GemmaOcrError, match=rf"^{path}: field '{key}' {re.escape(reason)}"):
            main()
    assert not capsys.readouterr().out
