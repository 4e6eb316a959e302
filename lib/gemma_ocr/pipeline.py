"""The main job on the embedded defaults: every stage in order, each skipped when its output exists.

data (synthetic lines) -> split -> baseline metrics -> ... (training, merge, serve and evaluation
stages are appended as they exist). Everything lands under one work folder so a run is self-contained.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gemma_ocr.data.records import load_raw_records, load_records, write_records
from gemma_ocr.data.split import split_non_test
from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset
from gemma_ocr.io import atomic_write_json
from gemma_ocr.results import build_document

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    root: Path = Path(".")
    n_samples: int = 300
    seed: int = 42
    force: bool = False

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
    def results_dir(self) -> Path:
        return self.root / "results"


def make_data(cfg: PipelineConfig) -> None:
    if cfg.raw_json.exists() and not cfg.force:
        log.info("data: %s exists, kept", cfg.raw_json)
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
    samples = [{"image_path": r.image_path, "label": r.text, "prediction": guess, "status": "ok"} for r in test]
    doc = build_document(samples, model_name="majority-label-baseline")
    atomic_write_json(cfg.results_dir / "baseline_majority.json", doc)
    return doc


def run_pipeline(cfg: PipelineConfig) -> dict[str, dict]:
    """Run every stage; return the results documents by model name."""
    make_data(cfg)
    split_data(cfg)
    results = {"majority-label-baseline": majority_baseline(cfg)}
    return results


def format_table(results: dict[str, dict]) -> str:
    """A side-by-side table of CER/F1 (micro, raw and normalized) for each model."""
    lines = [f"{'model':<32} {'CER':>8} {'F1':>8} {'CER norm':>9} {'F1 norm':>8} {'samples':>8} {'errors':>7}"]
    for name, doc in results.items():
        lines.append(
            f"{name:<32} {doc['overall_cer']:>8.4f} {doc['overall_f1']:>8.4f} {doc['normalized_overall_cer']:>9.4f} "
            f"{doc['normalized_overall_f1']:>8.4f} {doc['total_samples']:>8d} {doc['status_counts']['error']:>7d}"
        )
    lines.append("CER = total edits / total reference characters (micro); F1 over character multisets (micro).")
    return "\n".join(lines)
