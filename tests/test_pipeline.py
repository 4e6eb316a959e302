"""The main job end to end on the shipped tiny reader, scaled down: every stage really runs and fine-tuning helps."""

from __future__ import annotations

import json
import os

import pytest

from conftest import REPO, assert_one_line_error, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def manual_workflow_files(root):
    """What the README's manual sequence (sft_gemma.py, merge, evaluate.py) leaves in the same folder."""
    from gemma_ocr.results import build_document

    files = {root / "results/gemma_evaluation.json": json.dumps(build_document(
        [{"index": 0, "image_path": "x.png", "label": "12", "prediction": "12", "status": "ok"}],
        model_name="merged-gemma-ocr", data_file="data/input/ocr_test.json")),
        root / "models/gemma-ocr/adapter_config.json": "{}", root / "models/merged-gemma-ocr/config.json": "{}"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {path: path.read_bytes() for path in files}


@pytest.mark.slow
def test_pipeline_fine_tunes_the_reader_and_shows_the_gain(tmp_path):
    manual = manual_workflow_files(tmp_path)
    args = ("--root", str(tmp_path), "--n-samples", "720", "--non-test-ratio", "1:1", "--eval-top-k", "80",
            "--search-trials", "1")
    proc = run_cli("pipeline.py", *args, timeout=900, env=ONE_THREAD)
    out = proc.stdout
    results = tmp_path / "results/pipeline"
    base = json.loads((results / "eval_base.json").read_text())
    tuned = json.loads((results / "eval_finetuned.json").read_text())
    comparison = json.loads((results / "comparison.json").read_text())
    # the gain: lower CER on the same shifted test lines, an interval below zero, in the files and the table
    assert tuned["overall_cer"] < base["overall_cer"], (base["overall_cer"], tuned["overall_cer"])
    assert comparison["baseline_cer"] == pytest.approx(base["overall_cer"])
    assert comparison["candidate_cer"] == pytest.approx(tuned["overall_cer"])
    assert comparison["high"] < 0 and comparison["excludes_zero"] and comparison["samples"] == 80
    assert comparison["n_resamples"] == 10_000 and comparison["seed"] == 42
    assert f"CER {base['overall_cer']:.4f} -> {tuned['overall_cer']:.4f}" in out, out
    assert "paired bootstrap over 80 samples, 10000 resamples, seed 42" in out
    rows = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if line.startswith(("base", "fine"))}
    assert f"{base['overall_cer']:.4f}" in rows["base (tiny-gemma3-reader)"]
    assert f"{tuned['overall_cer']:.4f}" in rows["fine-tuned (merged-gemma-ocr)"]
    assert "empty-answer baseline" in out and "majority-label baseline" not in out  # the labels never repeat here
    assert "warning:" not in out  # neither model is constant or cut off
    for doc in (base, tuned):
        assert doc["total_samples"] == 80 and doc["status_counts"]["error"] == 0
        assert all(s["finish_reason"] == "stop" for s in doc["samples"])
        assert len({s["prediction"] for s in doc["samples"]}) > 60
    errors = json.loads((results / "errors/summary.json").read_text(encoding="utf-8"))
    assert errors["cer_micro"] == pytest.approx(tuned["overall_cer"]) and errors["baseline"]["matched"] == 80
    assert str(results / "errors/report.html") in out
    assert json.loads((tmp_path / "models/pipeline/merged-gemma-ocr/merge_report.json").read_text())["verified"]
    # the final training ran with the search's best configuration, on the shipped reader
    best = json.loads((tmp_path / "optuna_studies/pipeline_best_params.json").read_text())
    used = json.loads((tmp_path / "models/pipeline/gemma-ocr/train_config.json").read_text())
    assert best["best_params"]["learning_rate"] == used["learning_rate"]
    assert best["best_params"]["finetune_vision_layers"] == used["finetune_vision_layers"]
    assert used["model_name"] == "models/tiny-gemma3-reader" and used["train_mode"] == "lora"
    # the manual workflow's files are untouched
    assert {path: path.read_bytes() for path in manual} == manual

    # run again unchanged: every stage keeps its output, nothing is requested again
    log = run_cli("pipeline.py", *args, timeout=900, env=ONE_THREAD).stderr
    for stage in ("search", "train", "merge", "evaluate eval_base.json", "evaluate eval_finetuned.json"):
        assert f"INFO {stage}: " in log and "redoing" not in log, log
    assert log.count("(0 requested, 80 resumed)") == 2, log

    # new data, as an import and split leave it: everything made from the old split is redone
    from gemma_ocr.data.records import load_raw_records, write_records

    raw = tmp_path / "data/raw_data/ocr.json"
    write_records(load_raw_records(raw)[:600], raw, raw=True)
    proc = run_cli("pipeline.py", *args, timeout=900, env=ONE_THREAD)
    for stage in ("search", "train", "merge", "evaluate eval_base.json", "evaluate eval_finetuned.json"):
        assert f"INFO {stage}: " in proc.stderr and "was made from other inputs" in proc.stderr, proc.stderr
    assert proc.stderr.count("(80 requested, 0 resumed)") == 2 and "Scored on the first 80 of 300 test samples" in proc.stdout


def test_a_missing_base_model_names_the_pipelines_own_flag(tmp_path):
    proc = run_cli("pipeline.py", "--root", str(tmp_path), "--base-model", str(tmp_path / "none"), check=False)
    line = assert_one_line_error(proc, "--base-model", "neither a local folder nor a reachable hub id")
    assert "--model-name" not in line
    # the default reader ships in the repository: from elsewhere the error says where to run
    proc = run_cli("pipeline.py", "--root", str(tmp_path), cwd=tmp_path, check=False)
    line = assert_one_line_error(proc, "models/tiny-gemma3-reader", "repository's root folder", "--base-model")
    assert not (tmp_path / "data").exists()  # it stopped before any work


def test_every_flag_an_error_names_is_a_flag_of_the_pipeline(tmp_path):
    import re

    flags = set(re.findall(r"--[a-z][a-z-]+", run_cli("pipeline.py", "--help").stdout))
    bad_ratio = run_cli("pipeline.py", "--root", str(tmp_path), "--non-test-ratio", "7", check=False)
    no_model = run_cli("pipeline.py", "--root", str(tmp_path), "--base-model", "nowhere", check=False,
                       env={"HF_HUB_OFFLINE": "1"})
    for proc in (bad_ratio, no_model):
        named = set(re.findall(r"--[a-z][a-z-]+", proc.stderr))
        assert named and named <= flags, (named - flags, proc.stderr)


def test_force_re_renders_synthetic_data_but_never_replaces_your_own(tmp_path):
    from gemma_ocr.data.records import load_raw_records, write_records
    from gemma_ocr.data.synthetic import is_synthetic
    from gemma_ocr.pipeline import PipelineConfig, make_data

    cfg = PipelineConfig(root=tmp_path, n_samples=6)
    make_data(cfg)
    assert is_synthetic(cfg.layout.raw_json) and len(load_raw_records(cfg.layout.raw_json)) == 6
    assert all(r.text.isdigit() for r in load_raw_records(cfg.layout.raw_json))  # the shifted distribution: digits
    make_data(PipelineConfig(root=tmp_path, n_samples=9))  # kept without --force
    assert len(load_raw_records(cfg.layout.raw_json)) == 6
    make_data(PipelineConfig(root=tmp_path, n_samples=9, force=True))  # synthetic: re-rendered
    assert len(load_raw_records(cfg.layout.raw_json)) == 9

    own = load_raw_records(cfg.layout.raw_json)[:2]  # e.g. written by core/import_ocr_data.py --force
    write_records(own, cfg.layout.raw_json, raw=True)
    assert not is_synthetic(cfg.layout.raw_json)
    make_data(PipelineConfig(root=tmp_path, n_samples=9, force=True))
    assert load_raw_records(cfg.layout.raw_json) == own


def test_pipeline_help_names_the_shipped_reader():
    assert "tiny reader" in run_cli("pipeline.py", "--help").stdout
    assert "the shipped tiny reader" in run_cli("sft_gemma.py", "--help").stdout
    assert os.path.isdir(REPO / "models/tiny-gemma3-reader")


def test_pipeline_settings_come_from_defaults_a_config_file_and_flags(tmp_path):
    from pathlib import Path

    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.layout import LAYOUT
    from gemma_ocr.pipeline import PipelineConfig
    from gemma_ocr.settings import ConfigParser

    def parse(*argv):
        return ConfigParser(PipelineConfig).parse_settings(list(argv))[0]

    defaults = parse()
    assert (defaults.base_model, defaults.train_config, defaults.eval_top_k) == (LAYOUT.reader, LAYOUT.train_config, 200)
    config = tmp_path / "job.yaml"
    config.write_text("n_samples: 50\nnon_test_ratio: '1:1'\neval_top_k: null\nseed: 7\nstages: [data, split]\n")
    cfg = parse("--config", str(config), "--seed", "8", "--root", str(tmp_path))
    assert (cfg.n_samples, cfg.non_test_ratio, cfg.eval_top_k, cfg.seed) == (50, 0.5, None, 8)
    assert cfg.stages == ("data", "split") and cfg.root == tmp_path and cfg.layout.test_json == tmp_path / LAYOUT.test_json
    assert parse("--non-test-ratio", "0.25", "--eval-top-k", "None").non_test_ratio == 0.25
    for argv, line in [
        (["--non-test-ratio", "1:x"], "--non-test-ratio must be a fraction such as 0.2, 1/6 or 1:5"),
        (["--stages", "data", "trian"], "--stages item 2 must be one of data, split, baseline, search, train, merge, "
                                        "evaluate, got 'trian'; did you mean 'train'?"),
        (["--eval-workers", "0"], "--eval-workers must be >= 1, got 0"),
        (["--eval-top-k", "0"], "--eval-top-k must be >= 1, got 0"),
        (["--n-sample", "5"], "unknown flag --n-sample; did you mean --n-samples?"),
    ]:
        with pytest.raises(GemmaOcrError) as e:
            parse(*argv)
        assert str(e.value).startswith(line), (argv, str(e.value))
    config.write_text('{"eval_topk": 5}')
    with pytest.raises(GemmaOcrError, match=r"job.yaml: unknown key 'eval_topk'; did you mean 'eval_top_k'\?"):
        parse("--config", str(config))
    assert parse("--base-model", "google/gemma-3-4b-it").base_model == Path("google/gemma-3-4b-it")
