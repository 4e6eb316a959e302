"""The main job: every stage in order, each kept when its output exists and is current.

data (synthetic lines of :data:`~gemma_ocr.data.synthetic.SHIFTED_DIGITS`: digits in Noto Serif, a font the shipped
tiny reader was not pretrained on) -> split -> trivial baselines (empty answers; the most common label where labels
repeat) -> a short Optuna search of :data:`~gemma_ocr.pipeline.stages.PIPELINE_SEARCH_SPACE` on the base model
(fixed parameters from configs/hyperparm_configs/default.json) -> LoRA SFT with the best configuration -> merge to
bf16 -> serve (embedded server) -> evaluate the base model and the fine-tuned one on the same test samples -> their
CER difference with a paired bootstrap 95% interval. With ``compare_with`` (``--compare-with tesseract rapidocr``)
the OCR engines a user would pick instead read the same test samples too (:mod:`gemma_ocr.evaluation.engines`), and
the fine-tuned model is compared with each of them (:func:`gemma_ocr.scoring.comparison.compare_documents`:
interval, permutation test, per slice).

The pipeline's own outputs live apart from the manual workflow's (``models/pipeline/``,
``results/pipeline/``, the study ``pipeline``), so that running sft_gemma.py, merge, serve and
evaluate.py by hand never collides with it. The data (``data/raw_data/ocr.json`` and its split in
``data/input/``) is shared: the pipeline renders lines only when there is none, and runs on yours.

A stage's output is kept only while it was made from the same inputs: ``results/pipeline/state.json``
(:mod:`gemma_ocr.pipeline.state`) records a fingerprint of what each stage read (the split's files, the config,
the model weights), so after new data is imported and split, the search, training, merge and evaluations are redone.

Each stage reports to a :class:`~gemma_ocr.progress.StageLine` (``run_pipeline(cfg, Stages())``: one line per
stage on the screen; without it nothing is shown): the search's trial with the best CER so far, the training's
step and latest eval_cer, the samples an evaluation has read. The detail goes to the log
(:func:`gemma_ocr.progress.run_log`), the trainer's per-step figures included.
"""

from __future__ import annotations

from typing import Any

from gemma_ocr.pipeline.config import PipelineConfig
from gemma_ocr.pipeline.stages import (baselines, check_base_model, compare, compare_with_engines, error_report,
                                       evaluate_engine, evaluate_served, make_data, merge, search, split_data, train)
from gemma_ocr.pipeline.state import StageRecord
from gemma_ocr.progress import Stages
from gemma_ocr.training.config import resolve_config

BASE_ROW, TUNED_ROW = "base", "fine-tuned"


def run_pipeline(cfg: PipelineConfig, stages: Stages | None = None) -> dict[str, dict]:
    """Run every stage; return the results documents by table row (and the comparison under ``"comparison"``).

    ``stages``: where each stage shows its line (:class:`~gemma_ocr.progress.Stages`); None: nowhere."""
    stages = stages or Stages(silent=True)
    if {"search", "train", "merge", "evaluate"} & set(cfg.stages):
        check_base_model(cfg)  # before any work
    if "data" in cfg.stages:
        with stages.stage("data") as line:
            make_data(cfg, line)
    if "split" in cfg.stages:
        with stages.stage("split") as line:
            split_data(cfg, line)
    results: dict[str, Any] = {}
    if "baseline" in cfg.stages:
        with stages.stage("baseline") as line:
            results.update(baselines(cfg, line))
    record = StageRecord(cfg.state_file)
    best_config = None
    if "search" in cfg.stages:
        with stages.stage("search", total=cfg.search_trials or None) as line:
            best_config = search(cfg, record, line)
    if "train" in cfg.stages:
        with stages.stage("train") as line:
            train(cfg, record, best_config, line)
    if "merge" in cfg.stages:
        with stages.stage("merge") as line:
            merge(cfg, record, line)
    if "evaluate" in cfg.stages:
        threads = resolve_config(cfg.train_config, {}).torch_threads  # as training ran: 1 for the tiny reader
        with stages.stage(f"evaluate {BASE_ROW}") as line:
            base = evaluate_served(cfg, record, cfg.base_model, cfg.base_results, threads, line)
        with stages.stage(f"evaluate {TUNED_ROW}") as line:
            tuned = evaluate_served(cfg, record, cfg.merged_dir, cfg.tuned_results, threads, line)
        results[f"{BASE_ROW} ({cfg.base_model.name})"] = base
        results[f"{TUNED_ROW} ({cfg.merged_dir.name})"] = tuned
        engines = {}
        for engine in cfg.compare_with:
            with stages.stage(f"evaluate {engine}") as line:
                engines[engine] = evaluate_engine(cfg, record, engine, line)
        for doc in engines.values():
            results[doc["model_name"]] = doc  # e.g. tesseract-5.3.0 eng psm7
        with stages.stage("report") as line:
            line.set("paired bootstrap interval of the CER difference")
            results["comparison"] = compare(cfg, base, tuned)
            if engines:
                line.set("the fine-tuned model against each engine")
                results["engine_comparison"] = compare_with_engines(cfg, tuned, engines)
            line.set("where the errors are")
            line.end(f"{cfg.comparison_file}, {error_report(cfg)}")
    return results
