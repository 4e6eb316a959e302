"""Shared helpers of the Khmer-digits tests (tiny generated data sets, quiet CPU settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from gemma_ocr.khmer_digits.generator import GeneratorConfig, generate_dataset

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)  # a small CNN: more threads only spin-wait on a busy machine


def tiny_dataset(folder: Path, n_train: int = 48, n_val: int = 16, seed: int = 7) -> Path:
    """A small generated dataset; returns its metadata.yaml."""
    return generate_dataset(folder, GeneratorConfig(n_train=n_train, n_val=n_val, seed=seed))


def run_program(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a core/ program with the repository's lib/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "lib"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=300)
