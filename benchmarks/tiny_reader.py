#!/usr/bin/env python
"""The tiny reader end to end: its rebuild's learning curve (held-out CER against CPU seconds), then the main job.

1. Rebuilds the reader from random weights with the shipped recipe (gemma_ocr.modeling.reader.ReaderRecipe:
   the command `python core/make_tiny_model.py --pretrain` runs), printing held-out CER every
   --curve-every steps on 50 lines, the final CER on 200 held-out lines, the CPU seconds, and whether the
   weights are bit for bit the shipped ones (the build is deterministic on one CPU).
2. Runs `python core/pipeline.py` in a fresh folder on the shipped reader and prints its table: base and
   fine-tuned CER on the shifted test set (digits in Noto Serif) and the paired bootstrap interval of the
   difference, with the pipeline's CPU seconds and wall time.

    python benchmarks/tiny_reader.py                       # both (about 10 + 5 CPU-minutes)
    python benchmarks/tiny_reader.py --skip-rebuild        # the main job only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from gemma_ocr.cli import run

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rebuild(work: Path) -> None:
    from gemma_ocr.layout import LAYOUT
    from gemma_ocr.modeling.reader import CARD_FILE, ReaderRecipe, pretrain_reader

    recipe = ReaderRecipe()
    report = pretrain_reader(work / "reader", recipe, work_dir=work / "build")
    print(f"\n## Rebuild: {recipe.lines:,} lines, {recipe.max_steps} steps + {recipe.anneal_steps} annealing steps, "
          f"batch {recipe.batch_size}, {recipe.threads} thread(s)\n")
    print("| step | CPU s | held-out CER (50 lines) |\n| ---: | ---: | ---: |")
    for point in report.curve:
        print(f"| {point['step']} | {point['cpu_s']:.0f} | {point['cer']:.3f} |")
    shipped = REPO / LAYOUT.reader / CARD_FILE
    same = (json.loads(shipped.read_text())["weights_sha256"] == report.weights_sha256) if shipped.is_file() else None
    print(f"\nheld-out CER {report.heldout_cer:.4f} on {report.heldout_lines} lines (target <= {recipe.target_cer}); "
          f"{report.cpu_seconds:.0f} CPU s, {report.wall_seconds:.0f} s wall; weights identical to the shipped "
          f"reader: {'n/a' if same is None else 'yes' if same else 'no'} (sha256 {report.weights_sha256[:12]})")


def main_job(work: Path, extra: list[str]) -> None:
    root = work / "pipeline"
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cpu0, t0 = _children_cpu(), time.time()
    proc = subprocess.run([sys.executable, str(REPO / "core/pipeline.py"), "--root", str(root), *extra], cwd=REPO,
                          env=env, capture_output=True, text=True)
    cpu, wall = _children_cpu() - cpu0, time.time() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"pipeline.py exited {proc.returncode}")
    print(f"\n## Main job: python core/pipeline.py {' '.join(extra)}\n")
    print(proc.stdout)
    comparison = json.loads((root / "results/pipeline/comparison.json").read_text())
    print(f"pipeline: {cpu:.0f} CPU s (its processes and servers), {wall:.0f} s wall; "
          f"relative change {comparison['relative_change']:+.1%}, interval excludes zero: {comparison['excludes_zero']}")


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("experiments/tiny_reader_benchmark"))
    p.add_argument("--skip-rebuild", action="store_true", help="only the main job, on the shipped reader")
    p.add_argument("--skip-pipeline", action="store_true", help="only the rebuild")
    p.add_argument("pipeline_args", nargs="*", help="extra flags for core/pipeline.py (after --)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if not args.skip_rebuild:
        rebuild(args.work_dir)
    if not args.skip_pipeline:
        main_job(args.work_dir, args.pipeline_args)
    print(f"\nsha256 of the shipped weights: "
          f"{hashlib.sha256((REPO / 'models/tiny-gemma3-reader/model.safetensors').read_bytes()).hexdigest()[:12]}")


if __name__ == "__main__":
    run(main)
