"""Shared fixtures of the SFT tests: one tiny Gemma 3 and one tiny Gemma 4 checkpoint and one small synthetic dataset
per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma_ocr.modeling.loading import four_bit_unavailable_reason

ROOT = Path(__file__).resolve().parents[2]

needs_4bit = pytest.mark.skipif(four_bit_unavailable_reason() is not None,
                                reason="4-bit nf4 needs bitsandbytes (>= 0.48 on a CPU)")


def sft_env() -> dict[str, str]:
    """Environment for subprocesses: the library importable, few threads, no network trackers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "lib") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["WANDB_MODE"] = "offline"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("WANDB_API_KEY", None)
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight tiny Gemma 3 (hub layout): the "any Gemma 3" of tests; the suite's default model is the reader."""
    from gemma_ocr.modeling.tiny import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_gemma4_dir(tmp_path_factory) -> Path:
    """A random-weight tiny Gemma 4 (hub layout, image-token budget 70): the "any Gemma 4" of tests."""
    from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4

    return build_tiny_gemma4(tmp_path_factory.mktemp("tiny4") / "tiny-gemma4")


@pytest.fixture(scope="session")
def ocr_data(tmp_path_factory) -> Path:
    """40 synthetic lines written in the input layout (data/input/ocr_non_test.json style)."""
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("ocrdata")
    records = generate_dataset(root / "raw", SyntheticConfig(n_samples=40, seed=7))
    path = root / "input" / "ocr_non_test.json"
    write_records(records, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model trains fastest on one thread; more only contend with other work on a small machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
