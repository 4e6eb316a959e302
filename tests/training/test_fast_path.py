"""The default fast training path computes the same loss and LoRA gradients as plain transformers + PEFT.

On a CPU in fp32 the switches that run there (frozen vision tower without gradients, offloaded
checkpointing) must match the plain path to rounding. The lean 4-bit preparation keeps bf16 where plain
PEFT upcasts to fp32, so nf4 QLoRA (bitsandbytes' CPU kernels here) matches within bf16 tolerances. The
CUDA switches (Liger kernels, TRL's fused LM head) are compared in Triton's CPU interpreter
(tests/training/test_triton_kernels.py, fp32), on a GPU (marked ``gpu``) and by the
benchmark's loss line.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from gemma_ocr.training.config import TrainConfig
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.training import speed as fast_path
from gemma_ocr.modeling.loading import load_model
from gemma_ocr.training.data import OcrCollator
from tests.helpers.sft_fixtures import ROOT, needs_4bit, ocr_data, tiny_model_dir, one_torch_thread  # noqa: F401

sys.path.insert(0, str(ROOT / "benchmarks"))
from train_throughput import seed_lora  # noqa: E402

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 2e-2, 0.1  # the benchmark's bf16 loss tolerance; gradients as a whole
pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def batch(tiny_model_dir, ocr_data):  # noqa: F811
    from gemma_ocr.data.records import load_records
    from gemma_ocr.modeling.loading import load_processor

    records = [{"image_path": r.image_path, "text": r.text} for r in load_records(ocr_data)[:3]]
    return OcrCollator(load_processor(str(tiny_model_dir)), TrainConfig().instruction)(records)


def loss_and_grads(model_dir, batch, **changes):
    """Loss and LoRA gradients of one training step (checkpointing as the trainer enables it)."""
    config = TrainConfig(model_name=str(model_dir), **changes)
    torch.manual_seed(0)
    model, _ = load_model(config)
    fast_path.enable_checkpointing(model, config)
    model.enable_input_require_grads()  # as TRL's SFTTrainer does for PEFT + checkpointing
    seed_lora(model)
    seen = {}
    tower = fast_path.vision_tower_of(model)
    hook = tower.register_forward_hook(lambda m, i, o: seen.update(grad=o.last_hidden_state.requires_grad))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    hook.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, seen["grad"]


@pytest.fixture(scope="module")
def plain(tiny_model_dir, batch):  # noqa: F811
    return loss_and_grads(tiny_model_dir, batch, fast_path=False)


def assert_same(a, b, loss_rtol: float = LOSS_RTOL, grad_rtol: float = GRAD_RTOL):
    loss_a, grads_a, _ = a
    loss_b, grads_b, _ = b
    assert loss_b == pytest.approx(loss_a, rel=loss_rtol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name, g in grads_a.items():
        assert g.abs().sum() > 0, name  # the seeded LoRA weights make every gradient non-zero
        rel = ((grads_b[name].float() - g.float()).norm() / g.float().norm()).item()
        assert rel < grad_rtol, (name, rel)


def test_fast_path_matches_plain_loss_and_lora_grads(tiny_model_dir, batch, plain):  # noqa: F811
    fast = loss_and_grads(tiny_model_dir, batch, fast_path=True)
    assert plain[2] is True, "the plain path back-propagates through the frozen vision tower"
    assert fast[2] is False, "the fast path runs the frozen vision tower without gradients"
    assert_same(plain, fast)


def test_offloaded_checkpointing_matches_plain(tiny_model_dir, batch, plain):  # noqa: F811
    assert_same(plain, loss_and_grads(tiny_model_dir, batch, fast_path=True, activation_offloading=True))


@needs_4bit
def test_lean_nf4_matches_plain_nf4_qlora(tiny_model_dir, batch):  # noqa: F811
    plain_nf4 = loss_and_grads(tiny_model_dir, batch, fast_path=False, load_in_4bit=True)
    lean_nf4 = loss_and_grads(tiny_model_dir, batch, fast_path=True, load_in_4bit=True)
    assert plain_nf4[2] is True and lean_nf4[2] is False
    assert_same(plain_nf4, lean_nf4, BF16_LOSS_RTOL, BF16_GRAD_RTOL)
    offloaded = loss_and_grads(tiny_model_dir, batch, fast_path=True, load_in_4bit=True, activation_offloading=True)
    assert_same(lean_nf4, offloaded)  # the memory-saving option: the same numbers as the lean path


def test_trained_vision_tower_keeps_its_gradients(tiny_model_dir, batch):  # noqa: F811
    loss, grads, vision_grad = loss_and_grads(tiny_model_dir, batch, fast_path=True, finetune_vision_layers=True)
    assert vision_grad is True
    vision = [g for n, g in grads.items() if "vision_tower" in n]
    assert vision and all(g.abs().sum() > 0 for g in vision)


def test_switches_resolve_without_cuda(tiny_model_dir, monkeypatch):  # noqa: F811
    from gemma_ocr.training.tune import sft_arguments

    monkeypatch.setattr(fast_path, "cuda_available", lambda: False)
    config = TrainConfig(model_name=str(tiny_model_dir), activation_offloading=True)
    assert fast_path.use_liger(config) is False  # auto: no CUDA
    assert fast_path.dataloader_workers(config) == 0
    assert fast_path.dataloader_workers(config.replace(dataloader_num_workers=3)) == 3
    args = sft_arguments(config, [], has_eval=False, resuming=False)
    assert args.use_liger_kernel is False and args.dataloader_num_workers == 0
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False, "offload": True}
    assert args.activation_offloading is False  # checkpointing carries the offload
    no_ckpt = sft_arguments(config.replace(gradient_checkpointing=False), [], has_eval=False, resuming=False)
    assert no_ckpt.activation_offloading is True


def test_auto_switches_with_cuda(monkeypatch):
    monkeypatch.setattr(fast_path, "cuda_available", lambda: True)
    monkeypatch.setattr(fast_path, "liger_available", lambda: True)
    config = TrainConfig()
    assert fast_path.use_liger(config) is True
    assert fast_path.use_liger(config.replace(fast_path=False)) is False
    assert fast_path.use_liger(config.replace(use_liger_kernel=False)) is False
    assert 0 <= fast_path.dataloader_workers(config) <= fast_path.MAX_AUTO_WORKERS
    assert fast_path.dataloader_workers(config.replace(fast_path=False)) == 0


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed here")
def test_liger_on_without_the_package_is_one_clear_error(tiny_model_dir):  # noqa: F811
    with pytest.raises(GemmaOcrError, match="liger-kernel is not installed"):
        load_model(TrainConfig(model_name=str(tiny_model_dir), use_liger_kernel=True))


def test_bad_switch_values_are_one_clear_line():
    with pytest.raises(GemmaOcrError, match="use_liger_kernel"):
        TrainConfig.from_dict({"use_liger_kernel": "sometimes"})
    with pytest.raises(GemmaOcrError, match="attn_implementation"):
        TrainConfig.from_dict({"attn_implementation": "flash"})
    with pytest.raises(GemmaOcrError, match="dataloader_num_workers"):
        TrainConfig.from_dict({"dataloader_num_workers": -1})


# ------------------------------------------------------------------------------------------ GPU

def _gpu_step(model_dir, data, out, batch, **changes):
    """One step through the project's trainer on CUDA (fused LM head; Liger, applied by ``train()``, when installed),
    then the fixed batch's loss and LoRA gradients."""
    from tests.helpers.interpreted_kernels import trainer_step

    config = TrainConfig(model_name=str(model_dir), input_data=str(data), output_dir=str(out), report_to=["none"],
                         max_steps=1, per_device_train_batch_size=1, train_split="train[:4]", val_split=None,
                         **changes)
    loss, grads, _ = trainer_step(config, batch)
    return loss, grads


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("nf4", [False, True])
def test_gpu_fast_path_matches_plain(tiny_model_dir, ocr_data, tmp_path, batch, nf4):  # noqa: F811
    if nf4 and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed")
    loss_p, grads_p = _gpu_step(tiny_model_dir, ocr_data, tmp_path / "p", batch, fast_path=False, load_in_4bit=nf4)
    loss_f, grads_f = _gpu_step(tiny_model_dir, ocr_data, tmp_path / "f", batch, fast_path=True, load_in_4bit=nf4)
    assert loss_f == pytest.approx(loss_p, rel=2e-2)
    for name, g in grads_p.items():
        rel = ((grads_f[name] - g).norm() / g.norm().clamp(min=1e-12)).item()
        assert rel < 0.1, (name, rel)
