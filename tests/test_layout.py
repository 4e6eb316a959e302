"""Paths come from one place: gemma_ocr.layout defines the project's folders and default files, every stage reads it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers.programs import REPO
from gemma_ocr.layout import LAYOUT, Layout

#: A folder of the layout at the start of a path (``models/x``, ``sqlite:///optuna_studies/x``), or one of its
#: distinctive names: what a module would spell out instead of asking the layout.
TOP_FOLDERS = ("models", "data", "results", "optuna_studies", "reports", "configs", "generated_data", "training_output")
PATH_LITERAL = re.compile(r"(?<![\w.-])(?:" + "|".join(TOP_FOLDERS) + r")/|\boptuna_studies\b|\bhyperparam_search\b"
                          r"|\braw_data/|\bdata_analysis/output|tiny-gemma3-|merged-gemma-ocr|\bocr(?:_non)?(?:_test)?\.json\b"
                          r"|gemma_evaluation\.json|transcriptions\.jsonl|phase3_simple_configs")


def docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def path_literals(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each string constant (f-string parts included) that spells a path of the layout;
    docstrings are documentation and are passed over."""
    tree = ast.parse(source)
    docs = docstring_lines(tree)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.lineno not in docs
            and PATH_LITERAL.search(node.value))


def test_the_check_finds_what_it_is_for():
    found = path_literals('"""Writes models/gemma-ocr."""\nA = "models/gemma-ocr"\nB = f"{x}/results/{y}"\n'
                          'C = Path("optuna_studies")\nD = f"sqlite:///optuna_studies/{s}.db"\nE = "ocr_test.json"\n'
                          'F = "results file"\nG = r.json().get("data", [])\nH = "raw_data/x"\n')
    assert [line for line, _ in found] == [2, 3, 4, 5, 6, 9]


def test_no_module_outside_the_layout_spells_out_a_path_of_it():
    offenders = []
    for root in (REPO / "lib", REPO / "core"):
        for path in sorted(root.rglob("*.py")):
            if path == REPO / "lib/gemma_ocr/layout.py":
                continue
            for line, text in path_literals(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, "use gemma_ocr.layout.LAYOUT instead:\n" + "\n".join(offenders)


def test_the_layout_is_the_documented_one_and_relative_to_its_root(tmp_path):
    assert str(LAYOUT.reader) == "models/tiny-gemma3-reader" and (REPO / LAYOUT.reader / "config.json").is_file()
    assert str(LAYOUT.adapter) == "models/gemma-ocr" and str(LAYOUT.merged) == "models/merged-gemma-ocr"
    assert (str(LAYOUT.raw_json), str(LAYOUT.non_test_json), str(LAYOUT.test_json)) == (
        "data/raw_data/ocr.json", "data/input/ocr_non_test.json", "data/input/ocr_test.json")
    assert (str(LAYOUT.evaluation), str(LAYOUT.transcriptions)) == ("results/gemma_evaluation.json",
                                                                    "results/transcriptions.jsonl")
    assert (str(LAYOUT.studies), str(LAYOUT.search_trials)) == ("optuna_studies", "models/hyperparam_search")
    assert (str(LAYOUT.pipeline_models), str(LAYOUT.pipeline_results)) == ("models/pipeline", "results/pipeline")
    assert (REPO / LAYOUT.train_config).is_file() and (REPO / LAYOUT.khmer_experiments).is_file()
    moved = Layout(tmp_path)
    for name in ("reader", "raw_json", "test_json", "studies", "evaluation", "pipeline_results", "khmer_runs"):
        assert getattr(moved, name) == tmp_path / getattr(LAYOUT, name), name


@pytest.mark.parametrize("default, expected", [
    ("gemma_ocr.training.config:OcrArguments.model_name", LAYOUT.reader),
    ("gemma_ocr.training.config:OcrArguments.input_data", LAYOUT.non_test_json),
    ("gemma_ocr.training.config:OcrArguments.output_dir", LAYOUT.adapter),
    ("gemma_ocr.evaluation.settings:EvalConfig.data_file", LAYOUT.test_json),
    ("gemma_ocr.evaluation.settings:EvalConfig.output_file", LAYOUT.evaluation),
    ("gemma_ocr.evaluation.transcription:TranscribeConfig.output_file", LAYOUT.transcriptions),
    ("gemma_ocr.search.config:SearchArguments.base_output_dir", LAYOUT.search_trials),
    ("gemma_ocr.search.config:SearchArguments.studies_dir", LAYOUT.studies),
    ("gemma_ocr.pipeline.config:PipelineConfig.base_model", LAYOUT.reader),
    ("gemma_ocr.pipeline.config:PipelineConfig.train_config", LAYOUT.train_config),
    ("gemma_ocr.khmer_digits.utils:TrainingConfig.metadata_path", LAYOUT.khmer_metadata),
    ("gemma_ocr.khmer_digits.utils:TrainingConfig.output_dir", LAYOUT.khmer_runs),
])
def test_every_stage_takes_its_default_from_the_layout(default, expected):
    import dataclasses
    import importlib

    module, name = default.split(":")
    cls_name, field_name = name.split(".")
    cls = getattr(importlib.import_module(module), cls_name)
    (f,) = [f for f in dataclasses.fields(cls) if f.name == field_name]
    assert Path(f.default) == expected
