"""The main job on the embedded defaults: synthetic data -> split -> search -> LoRA SFT -> merge -> serve -> evaluate, CER/F1 side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from gemma_ocr.cli import none_or_int
from gemma_ocr.pipeline import PipelineConfig, format_table, run_pipeline


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    p.add_argument("--root", type=Path, default=Path("."), help="folder that holds data/, models/, results/")
    p.add_argument("--n-samples", type=int, default=300, help="synthetic lines to render")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="redo every stage, also those whose outputs are current")
    p.add_argument("--train-config", type=Path, default=Path("configs/hyperparm_configs/default.json"))
    p.add_argument("--eval-top-k", type=none_or_int, default=30, help="first test samples scored per model (None: all)")
    p.add_argument("--eval-workers", type=int, default=2)
    p.add_argument("--search-trials", type=int, default=3, help="Optuna trials before the final training (0: none)")
    args = p.parse_args()
    cfg = PipelineConfig(root=args.root, n_samples=args.n_samples, seed=args.seed, force=args.force,
                         train_config=args.train_config, eval_top_k=args.eval_top_k, eval_workers=args.eval_workers,
                         search_trials=args.search_trials)
    results = run_pipeline(cfg)
    print(format_table(results))
    report = cfg.error_report_dir / "report.html"
    if "evaluate" in cfg.stages and report.is_file():
        print(f"Where the fine-tuned model errs, against the base model: {report} (python core/error_analysis.py)")
