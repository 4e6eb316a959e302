"""The CUDA half of the fast path, TRL's fused LM head and Liger's Gemma 3 kernels, against the plain loss on a CPU.

Both are Triton kernels; Triton's interpreter (``TRITON_INTERPRET=1``) runs their code on CPU tensors,
so the project's trainer takes the same path it takes on a GPU: TRL's chunked log-prob kernel instead of
the logits, Liger's RMSNorm, LayerNorm, GeGLU and RoPE in place of transformers' modules. The loss of a
fixed batch and every LoRA gradient must match the model's own loss (fp32; see
tests/helpers/interpreted_kernels.py for the interpreter's bf16 gap).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.helpers.sft_fixtures import ROOT, ocr_data, sft_env, tiny_model_dir  # noqa: F401

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (it comes with "
                       "torch on Linux)"),
    pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel is not installed"),
]


@pytest.fixture(scope="module")
def interpreted(tiny_model_dir, ocr_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("interpreted")
    env = sft_env() | {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, on a GPU machine too
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "interpreted_kernels.py"), str(tiny_model_dir),
                           str(ocr_data), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def assert_matches_plain(case: dict, plain: dict) -> None:
    assert case["loss"] == pytest.approx(plain["loss"], rel=LOSS_RTOL)
    diffs = case["grad_rel_diff"]
    assert len(diffs) > 0
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < GRAD_RTOL, (worst, diffs[worst])


@pytest.mark.e2e
def test_fused_lm_head_matches_the_model_loss(interpreted):
    case = interpreted["cases"]["fused-head"]
    assert case["fused_head_used"] is True and case["switches"]["fused_lm_head"] is True
    assert case["liger_modules"] == []
    assert_matches_plain(case, interpreted["cases"]["plain"])


@pytest.mark.e2e
def test_liger_kernels_match_the_model_loss(interpreted):
    case = interpreted["cases"]["fused-head+liger"]
    assert case["switches"]["liger_kernel"] is True and case["fused_head_used"] is True
    # every kernel apply_liger_kernel_to_gemma3 swaps in (its fused cross-entropy stays off: TRL's head is on)
    assert {"LigerRMSNorm", "LigerGEGLUMLP", "LigerLayerNorm", "liger_rotary_pos_emb"} <= set(case["liger_modules"])
    assert_matches_plain(case, interpreted["cases"]["plain"])


@pytest.mark.e2e
def test_a_training_step_through_both_kernels_logs_a_finite_loss(interpreted):
    fused, liger = interpreted["cases"]["fused-head"], interpreted["cases"]["fused-head+liger"]
    assert math.isfinite(liger["train_step_loss"]) and liger["train_step_loss"] > 0
    assert liger["train_step_loss"] == pytest.approx(fused["train_step_loss"], rel=1e-4)


def test_liger_on_without_a_gpu_is_one_clear_error(tiny_model_dir, monkeypatch):  # noqa: F811
    import torch

    from gemma_ocr.training.config import TrainConfig
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.modeling.loading import load_model

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(GemmaOcrError, match="use_liger_kernel is on but no CUDA GPU"):
        load_model(TrainConfig(model_name=str(tiny_model_dir), use_liger_kernel=True))
