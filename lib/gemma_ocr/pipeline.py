"""The main job on the embedded defaults: every stage in order, each kept when its output exists and is current.

data (synthetic lines) -> split -> majority-label baseline -> a short Optuna search of the LoRA
hyperparameters on the tiny Gemma 3 (fixed parameters from configs/hyperparm_configs/default.json)
-> LoRA SFT with the best configuration -> merge to bf16 -> serve (embedded server) -> evaluate
the base model and the fine-tuned one on the same test samples. Everything lands under one work
folder (``root``: data/, models/, results/) so a run is self-contained.

A stage's output is kept only while it was made from the same inputs: ``results/pipeline_state.json``
records a fingerprint of what each stage read (the split's files, the config, the model weights), so
after new data is imported and split, the search, training, merge and evaluations are redone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_ocr.data.records import load_raw_records, load_records, write_records
from gemma_ocr.data.split import split_non_test
from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset, is_synthetic
from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.results import build_document

log = logging.getLogger(__name__)

SEARCH_STUDY = "pipeline"
# The tiny random model learns at rates far above a real Gemma 3's (the suite's default space is 1e-5..5e-4).
TINY_SEARCH_SPACE = {
    "learning_rate": {"type": "loguniform", "low": 2e-3, "high": 1e-2},
    "lora_r": {"type": "categorical", "choices": [8, 16]},
}


@dataclass
class PipelineConfig:
    root: Path = Path(".")
    n_samples: int = 300
    seed: int = 42
    force: bool = False
    train_config: Path = Path("configs/hyperparm_configs/default.json")
    eval_top_k: int | None = 30  # first test samples scored per model, baseline included (None: all)
    eval_workers: int = 2
    eval_max_tokens: int = 40
    search_trials: int = 3  # 0: no search, train with train_config as it is
    stages: tuple[str, ...] = ("data", "split", "baseline", "search", "train", "merge", "evaluate")

    @property
    def base_model_dir(self) -> Path:
        return self.root / "models/tiny-gemma3"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "models/gemma-ocr"

    @property
    def merged_dir(self) -> Path:
        return self.root / "models/merged-gemma-ocr"

    @property
    def studies_dir(self) -> Path:
        return self.root / "optuna_studies"

    @property
    def best_config(self) -> Path:
        return self.studies_dir / f"{SEARCH_STUDY}_best_config.json"

    @property
    def raw_json(self) -> Path:
        return self.root / "data/raw_data/ocr.json"

    @property
    def non_test_json(self) -> Path:
        return self.root / "data/input/ocr_non_test.json"

    @property
    def test_json(self) -> Path:
        return self.root / "data/input/ocr_test.json"

    @property
    def error_report_dir(self) -> Path:
        return self.results_dir / "errors"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def state_file(self) -> Path:
        return self.results_dir / "pipeline_state.json"

    @property
    def search_trials_dir(self) -> Path:
        return self.root / "models/hyperparam_search" / SEARCH_STUDY


# ---------------------------------------------------------------- what each kept output was made from

WEIGHT_FILES = ("*.safetensors", "config.json", "adapter_config.json")


def _file_sha256(path: Path) -> str:
    """The file's SHA-256, read once per version of the file (the base model's weights serve several stages)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short digest of ``parts``: a file by its bytes, a model folder by its weights and config, the rest by value."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            files = sorted({f for pattern in WEIGHT_FILES for f in part.glob(pattern) if f.is_file()})
            h.update(json.dumps([(f.name, _file_sha256(f)) for f in files]).encode())
        elif isinstance(part, Path):
            h.update(_file_sha256(part).encode() if part.is_file() else b"missing")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class StageRecord:
    """The fingerprint of the inputs each stage's output was made from (``results/pipeline_state.json``)."""

    def __init__(self, path: Path):
        self.path = path
        data = read_json(path, "pipeline state") if path.is_file() else {}
        self.stages: dict[str, str] = data if isinstance(data, dict) else {}

    def keeps(self, cfg: PipelineConfig, stage: str, output: Path, exists: bool, inputs: str) -> bool:
        """Whether ``stage`` can keep its existing ``output``: there, made from ``inputs``, and no ``--force``."""
        if cfg.force or not exists:
            return False
        if self.stages.get(stage) == inputs:
            log.info("%s: %s exists, kept", stage, output)
            return True
        log.info("%s: %s was made from other inputs (data, configuration or model changed): redoing it", stage, output)
        return False

    def done(self, stage: str, inputs: str) -> None:
        self.stages[stage] = inputs
        atomic_write_json(self.path, self.stages)


# ---------------------------------------------------------------- the stages


def make_data(cfg: PipelineConfig) -> None:
    """Render synthetic lines into data/raw_data/ unless data is there; ``--force`` re-renders only synthetic data."""
    if cfg.raw_json.exists():
        if not cfg.force:
            log.info("data: %s exists, kept", cfg.raw_json)
            return
        if not is_synthetic(cfg.raw_json):
            log.info("data: %s is not synthetic data rendered here: kept (--force never replaces your own data)",
                     cfg.raw_json)
            return
    generate_dataset(cfg.raw_json.parent, SyntheticConfig(n_samples=cfg.n_samples, seed=cfg.seed))
    log.info("data: %d synthetic lines -> %s", cfg.n_samples, cfg.raw_json)


def split_data(cfg: PipelineConfig) -> None:
    split = split_non_test(load_raw_records(cfg.raw_json))
    write_records(split.non_test, cfg.non_test_json)
    write_records(split.test, cfg.test_json)
    log.info("split: %d non_test, %d test", len(split.non_test), len(split.test))


def majority_baseline(cfg: PipelineConfig) -> dict:
    """Score the trivial model that answers every image with the most common training label."""
    train, test = load_records(cfg.non_test_json), load_records(cfg.test_json)
    guess = Counter(r.text for r in train).most_common(1)[0][0] if train else ""
    scored = test if cfg.eval_top_k is None else test[: cfg.eval_top_k]  # the samples the served models get
    samples = [{"image_path": r.image_path, "label": r.text, "prediction": guess, "status": "ok"} for r in scored]
    doc = build_document(samples, model_name="majority-label-baseline", dataset_samples=len(test), top_k=cfg.eval_top_k)
    atomic_write_json(cfg.results_dir / "baseline_majority.json", doc)
    return doc


def search(cfg: PipelineConfig, record: StageRecord) -> Path | None:
    """A short TPE search of :data:`TINY_SEARCH_SPACE` on the tiny model; returns the best config file (kept while current)."""
    from gemma_ocr.search.runner import resolve_settings, run_search
    from gemma_ocr.search.space import parse_search_space

    if cfg.search_trials <= 0:
        return None
    inputs = fingerprint(cfg.non_test_json, cfg.train_config, cfg.base_model_dir, TINY_SEARCH_SPACE,
                         cfg.search_trials, cfg.seed)
    if record.keeps(cfg, "search", cfg.best_config, cfg.best_config.is_file(), inputs):
        return cfg.best_config
    (cfg.studies_dir / f"{SEARCH_STUDY}.db").unlink(missing_ok=True)  # its trials were made from other inputs
    cfg.best_config.unlink(missing_ok=True)
    settings = resolve_settings(
        None, study_name=SEARCH_STUDY, resume=True, studies_dir=cfg.studies_dir, default_config=cfg.train_config,
        overrides={"n_trials": cfg.search_trials, "sampler_seed": cfg.seed, "base_output_dir": cfg.search_trials_dir},
        fixed_overrides={"model_name": str(cfg.base_model_dir), "input_data": str(cfg.non_test_json)},
    )
    settings.search_space = parse_search_space(TINY_SEARCH_SPACE)
    summary = run_search(settings)
    if summary.best_config_path is None:
        log.warning("search: no trial completed; training with %s", cfg.train_config)
        return None
    record.done("search", inputs)
    log.info("search: best %s %.4g (trial %s) %s -> %s", summary.metric, summary.best_value, summary.best_trial,
             summary.best_params, summary.best_config_path)
    return summary.best_config_path


def train(cfg: PipelineConfig, record: StageRecord, config_file: Path | None = None) -> Path:
    """LoRA SFT of the tiny Gemma 3 (the search's best config, else the default one); kept while current."""
    from gemma_ocr.config import resolve_config
    from gemma_ocr.training import tune

    config_file = config_file or cfg.train_config
    inputs = fingerprint(cfg.non_test_json, config_file, cfg.base_model_dir, cfg.seed)
    if record.keeps(cfg, "train", cfg.adapter_dir, (cfg.adapter_dir / "adapter_config.json").is_file(), inputs):
        return cfg.adapter_dir
    config = resolve_config(config_file, {
        "model_name": str(cfg.base_model_dir),
        "input_data": str(cfg.non_test_json),
        "output_dir": str(cfg.adapter_dir),
        "seed": cfg.seed,
    })
    result = tune(config)
    record.done("train", inputs)
    log.info("train: %d steps, train_loss %.4f, eval_loss %s -> %s", result["global_step"], result["train_loss"],
             result.get("eval_loss"), cfg.adapter_dir)
    return cfg.adapter_dir


def merge(cfg: PipelineConfig, record: StageRecord) -> Path:
    """Merge the adapter into the bf16 base (verified); kept while a verified merge of the same adapter exists."""
    from gemma_ocr.merge import merge_adapter

    report = cfg.merged_dir / "merge_report.json"
    inputs = fingerprint(cfg.adapter_dir, cfg.base_model_dir)
    if record.keeps(cfg, "merge", cfg.merged_dir, report.is_file() and bool(read_json(report).get("verified")), inputs):
        return cfg.merged_dir
    r = merge_adapter(cfg.adapter_dir, cfg.merged_dir, overwrite=True)  # its own earlier merge
    record.done("merge", inputs)
    log.info("merge: max |merged - (base+adapter)| %.3g <= %.3g -> %s", r.max_abs_diff, r.tolerance, cfg.merged_dir)
    return cfg.merged_dir


def evaluate_served(cfg: PipelineConfig, record: StageRecord, model_dir: Path, output: Path) -> dict:
    """Serve ``model_dir`` with the embedded server, evaluate the test set on it, stop the server.

    Finished samples of an earlier run are kept (resumed) while the model and the test data are the same.
    """
    from gemma_ocr.evaluation import EvalConfig, evaluate
    from gemma_ocr.serving import start_server

    stage = f"evaluate {output.name}"
    inputs = fingerprint(model_dir, cfg.test_json, cfg.eval_max_tokens)
    resume = record.keeps(cfg, stage, output, output.is_file(), inputs)
    with start_server(model_dir, startup_timeout=300) as (url, name):
        settings = EvalConfig(urls=[url], data_file=cfg.test_json, output_file=output, top_k=cfg.eval_top_k,
                              workers=cfg.eval_workers, model_name=name, save_interval=10,
                              max_tokens=cfg.eval_max_tokens, resume=resume)
        settings.flags = {"resume": "--force", "top_k": "--eval-top-k", "workers": "--eval-workers"}  # pipeline.py's
        out = evaluate(settings)
    record.done(stage, inputs)
    log.info("evaluate: %s -> %s (%d requested, %d resumed)", name, output, out.requested, out.resumed)
    return out.document


def run_pipeline(cfg: PipelineConfig) -> dict[str, dict]:
    """Run every stage; return the results documents by model name."""
    if "data" in cfg.stages:
        make_data(cfg)
    if "split" in cfg.stages:
        split_data(cfg)
    results: dict[str, dict] = {}
    if "baseline" in cfg.stages:
        results["majority-label-baseline"] = majority_baseline(cfg)
    if {"search", "train", "merge", "evaluate"} & set(cfg.stages):
        from gemma_ocr.modeling.tiny import ensure_tiny_model

        ensure_tiny_model(cfg.base_model_dir)  # before its weights are fingerprinted
    record = StageRecord(cfg.state_file)
    best_config = search(cfg, record) if "search" in cfg.stages else None
    if "train" in cfg.stages:
        train(cfg, record, best_config)
    if "merge" in cfg.stages:
        merge(cfg, record)
    if "evaluate" in cfg.stages:
        results["base (tiny-gemma3)"] = evaluate_served(cfg, record, cfg.base_model_dir, cfg.results_dir / "eval_base.json")
        results["fine-tuned (merged-gemma-ocr)"] = evaluate_served(cfg, record, cfg.merged_dir,
                                                                   cfg.results_dir / "gemma_evaluation.json")
        error_report(cfg)
    return results


def error_report(cfg: PipelineConfig) -> Path:
    """Where the fine-tuned model's character errors are, against the base model's: ``results/errors/``."""
    from gemma_ocr.error_analysis import analyze_file, compare
    from gemma_ocr.error_report import write_report

    tuned = analyze_file(cfg.results_dir / "gemma_evaluation.json")
    comparison = compare(tuned, analyze_file(cfg.results_dir / "eval_base.json"))
    report = write_report(tuned, cfg.error_report_dir, comparison=comparison)
    log.info("errors: %s", report.html)
    return report.html


def format_table(results: dict[str, dict]) -> str:
    """A side-by-side table of CER/F1 (micro, raw and normalized) for each model."""
    lines = [f"{'model':<32} {'CER':>8} {'F1':>8} {'CER norm':>9} {'F1 norm':>8} {'samples':>8} {'errors':>7}"]
    for name, doc in results.items():
        lines.append(
            f"{name:<32} {doc['overall_cer']:>8.4f} {doc['overall_f1']:>8.4f} {doc['normalized_overall_cer']:>9.4f} "
            f"{doc['normalized_overall_f1']:>8.4f} {doc['total_samples']:>8d} {doc['status_counts']['error']:>7d}"
        )
    lines.append("CER = total edits / total reference characters (micro); F1 over character multisets (micro).")
    limited = {(d.get("total_samples"), d.get("dataset_samples")) for d in results.values()
               if d.get("dataset_samples") and d["total_samples"] < d["dataset_samples"]}
    for n, total in sorted(limited):
        lines.append(f"Scored on the first {n} of {total} test samples (--eval-top-k None for all).")
    return "\n".join(lines)
