"""The main job end to end on the embedded defaults, scaled down: every stage really runs."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_cli


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_prints_the_side_by_side_table(tmp_path):
    config = json.loads((REPO / "configs/hyperparm_configs/default.json").read_text())
    config.update({"max_steps": 4, "eval_steps": 2, "save_steps": 4, "report_to": ["none"]})
    train_config = tmp_path / "train.json"
    train_config.write_text(json.dumps(config))
    args = ("--root", str(tmp_path), "--n-samples", "48", "--eval-top-k", "4", "--train-config", str(train_config),
            "--search-trials", "2")
    proc = run_cli("pipeline.py", *args, timeout=900)
    out = proc.stdout
    for row in ("majority-label-baseline", "base (tiny-gemma3)", "fine-tuned (merged-gemma-ocr)"):
        assert row in out, out
    assert "Scored on the first 4 of 40 test samples" in out
    errors = json.loads((tmp_path / "results/errors/summary.json").read_text(encoding="utf-8"))
    tuned = json.loads((tmp_path / "results/gemma_evaluation.json").read_text())
    assert errors["cer_micro"] == pytest.approx(tuned["overall_cer"]) and errors["baseline"]["matched"] == 4
    assert str(tmp_path / "results/errors/report.html") in out
    for name in ("baseline_majority.json", "eval_base.json", "gemma_evaluation.json"):
        doc = json.loads((tmp_path / "results" / name).read_text())
        assert doc["total_samples"] == 4 and doc["status_counts"]["error"] == 0
        assert 0.0 <= doc["overall_f1"] <= 1.0 and doc["overall_cer"] >= 0.0
    assert json.loads((tmp_path / "models/merged-gemma-ocr/merge_report.json").read_text())["verified"] is True
    assert (tmp_path / "models/gemma-ocr/adapter_config.json").is_file()
    # the final training ran with the search's best configuration
    best = json.loads((tmp_path / "optuna_studies/pipeline_best_params.json").read_text())
    used = json.loads((tmp_path / "models/gemma-ocr/train_config.json").read_text())
    assert best["best_params"]["learning_rate"] == used["learning_rate"]
    assert (tmp_path / "models/hyperparam_search/pipeline/trial_1/trial_1_results.json").is_file()

    # run again unchanged: every stage keeps its output, nothing is requested again
    log = run_cli("pipeline.py", *args, timeout=900).stderr
    for stage in ("search", "train", "merge", "evaluate eval_base.json", "evaluate gemma_evaluation.json"):
        assert f"INFO {stage}: " in log and "redoing" not in log, log
    assert log.count("(0 requested, 4 resumed)") == 2, log

    # new data, as an import and split leave it: everything made from the old split is redone
    from gemma_ocr.data.records import load_raw_records, write_records

    raw = tmp_path / "data/raw_data/ocr.json"
    write_records(load_raw_records(raw)[:36], raw, raw=True)
    proc = run_cli("pipeline.py", *args, timeout=900)
    for stage in ("search", "train", "merge", "evaluate eval_base.json", "evaluate gemma_evaluation.json"):
        assert f"INFO {stage}: " in proc.stderr and "was made from other inputs" in proc.stderr, proc.stderr
    assert proc.stderr.count("(4 requested, 0 resumed)") == 2 and "Scored on the first 4 of 30 test samples" in proc.stdout


def test_force_re_renders_synthetic_data_but_never_replaces_your_own(tmp_path):
    from gemma_ocr.data.records import load_raw_records, write_records
    from gemma_ocr.data.synthetic import is_synthetic
    from gemma_ocr.pipeline import PipelineConfig, make_data

    cfg = PipelineConfig(root=tmp_path, n_samples=6)
    make_data(cfg)
    assert is_synthetic(cfg.raw_json) and len(load_raw_records(cfg.raw_json)) == 6
    make_data(PipelineConfig(root=tmp_path, n_samples=9))  # kept without --force
    assert len(load_raw_records(cfg.raw_json)) == 6
    make_data(PipelineConfig(root=tmp_path, n_samples=9, force=True))  # synthetic: re-rendered
    assert len(load_raw_records(cfg.raw_json)) == 9

    own = load_raw_records(cfg.raw_json)[:2]  # e.g. written by core/import_ocr_data.py --force
    write_records(own, cfg.raw_json, raw=True)
    assert not is_synthetic(cfg.raw_json)
    make_data(PipelineConfig(root=tmp_path, n_samples=9, force=True))
    assert load_raw_records(cfg.raw_json) == own
