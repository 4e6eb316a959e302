#!/usr/bin/env python
"""The main job on the embedded defaults: synthetic data -> split -> ... -> CER/F1 side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from gemma_ocr.cli import run
from gemma_ocr.pipeline import PipelineConfig, format_table, run_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", type=Path, default=Path("."), help="folder that holds data/, models/, results/")
    p.add_argument("--n-samples", type=int, default=300, help="synthetic lines to render")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="redo stages whose outputs exist")
    args = p.parse_args()
    results = run_pipeline(PipelineConfig(root=args.root, n_samples=args.n_samples, seed=args.seed, force=args.force))
    print(format_table(results))


if __name__ == "__main__":
    run(main)
