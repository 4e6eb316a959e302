"""Run the CUDA half of the fast path (TRL's fused LM head, Liger's Gemma 3 kernels) on a CPU, in Triton's interpreter.

    TRITON_INTERPRET=1 python tests/helpers/interpreted_kernels.py MODEL_DIR DATA_JSON OUT_DIR

Writes OUT_DIR/results.json: the loss of one fixed batch in three cases (plain: the model's own loss,
no Triton kernel; the project's trainer with TRL's fused LM head; the same with Liger's kernels too),
each kernel case with the relative difference of every LoRA gradient against the plain case, the
Liger modules in the model and the loss the trainer logged for one training step.
tests/training/test_triton_kernels.py runs it in a fresh process: TRITON_INTERPRET must be set before any
kernel is defined, and Liger patches transformers' Gemma 3 module functions for the whole process.

Triton's interpreter (3.8) runs the kernels' own code on CPU tensors, with two gaps that compiled
Triton does not have and that :func:`fill_interpreter_gaps` fills: a float kernel argument stays a
Python float (compiled Triton passes an fp32 scalar, and Liger calls ``eps.to(tl.float32)``), and
CUDA libdevice functions (Liger's ``rsqrt`` and ``tanh``) have no interpreter version; they are
replaced by the same functions written with ``triton.language``. A third gap is not filled: the
interpreter computes bf16 arithmetic on the raw bits (a bf16 product comes out as ~1e38), so only fp32
is checked here; the bf16 and nf4 modes are compared on a GPU (benchmarks/train_throughput.py's loss line).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "benchmarks")]


def fill_interpreter_gaps() -> list[str]:
    """Make Triton's interpreter treat float arguments and libdevice calls as compiled Triton does; return what was replaced."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    implicit_cvt = interpreter._implicit_cvt

    def float_as_fp32(arg):
        if isinstance(arg, float):
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return implicit_cvt(arg)

    interpreter._implicit_cvt = float_as_fp32

    libdevice = {
        "rsqrt": lambda x: tl.math.rsqrt(x),
        "tanh": lambda x: 2.0 * tl.sigmoid(2.0 * x) - 1.0,
    }
    import liger_kernel.ops

    replaced = []
    for info in pkgutil.iter_modules(liger_kernel.ops.__path__, "liger_kernel.ops."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - backends for other hardware (Ascend, CuTe) do not import here
            continue
        for name, value in list(vars(module).items()):
            if callable(value) and "libdevice" in (getattr(value, "__module__", "") or ""):
                if name not in libdevice:
                    raise RuntimeError(f"{info.name} uses libdevice.{name}, which has no interpreter version here")
                setattr(module, name, libdevice[name])
                replaced.append(f"{info.name}.{name}")
    return replaced


def fixed_batch(model_dir: str, data_json: str) -> dict:
    from gemma_ocr.training.config import TrainConfig
    from gemma_ocr.data.records import load_records
    from gemma_ocr.modeling.loading import load_processor
    from gemma_ocr.training.data import OcrCollator

    records = [{"image_path": r.image_path, "text": r.text} for r in load_records(data_json)[:2]]
    return OcrCollator(load_processor(model_dir), TrainConfig().instruction)(records)


def plain_step(config, batch) -> tuple[float, dict]:
    """The model's own loss (no Triton kernel) and LoRA gradients, checkpointing as the trainer enables it."""
    import torch
    from train_throughput import seed_lora

    from gemma_ocr.training import speed as fast_path
    from gemma_ocr.modeling.loading import load_model

    torch.manual_seed(0)
    model, _ = load_model(config)
    fast_path.enable_checkpointing(model, config)
    model.enable_input_require_grads()
    seed_lora(model)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def trainer_step(config, batch) -> tuple[float, dict, dict]:
    """One training step through the project's trainer, then the fixed batch's loss, LoRA gradients and details
    (switches, the Liger kernels in the model, the step's logged loss)."""
    import torch
    from train_throughput import seed_lora

    from gemma_ocr.training import speed as fast_path
    from gemma_ocr.training.data import load_data
    from gemma_ocr.training.tune import build_trainer

    torch.manual_seed(0)
    train_ds, _ = load_data(config)
    trainer, _ = build_trainer(config, train_ds)
    trainer.train()
    model = trainer.model
    seed_lora(model)
    model.zero_grad(set_to_none=True)
    model.train()
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, trainer._prepare_inputs(dict(batch)))
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    from transformers.models.gemma3 import modeling_gemma3

    liger_modules = fast_path.liger_modules(model)
    if "liger" in modeling_gemma3.apply_rotary_pos_emb.__module__:
        liger_modules.append("liger_rotary_pos_emb")
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    details = {"switches": fast_path.describe(config), "fused_head_used": trainer._fused_head_usable(model),
               "liger_modules": liger_modules, "train_step_loss": logged[0] if logged else None}
    return loss.item(), grads, details


def grad_differences(reference: dict, other: dict) -> dict[str, float]:
    if reference.keys() != other.keys():
        raise RuntimeError(f"LoRA parameters differ: {sorted(reference.keys() ^ other.keys())[:4]}")
    return {n: ((other[n] - g).norm() / g.norm().clamp(min=1e-30)).item() for n, g in reference.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("data_json")
    p.add_argument("out_dir")
    args = p.parse_args()

    import torch

    from gemma_ocr.training.config import TrainConfig
    from gemma_ocr.training import speed as fast_path

    if not fast_path.triton_interpreted():
        raise SystemExit("set TRITON_INTERPRET=1 before running this script")
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(args.out_dir)
    replaced = fill_interpreter_gaps()
    batch = fixed_batch(args.model_dir, args.data_json)

    def config(name: str, **changes) -> TrainConfig:
        fields = dict(model_name=args.model_dir, input_data=args.data_json, output_dir=str(out / name),
                      report_to=["none"], max_steps=1, per_device_train_batch_size=1, train_split="train[:4]",
                      val_split=None, logging_steps=1, seed=1)
        return TrainConfig(**(fields | changes))

    results: dict = {"interpreter_replacements": replaced, "cases": {}}
    # the plain case first: Liger patches transformers' Gemma 3 for the rest of the process
    plain_loss, plain_grads = plain_step(config("plain"), batch)
    results["cases"]["plain"] = {"loss": plain_loss}
    for name, liger in (("fused-head", False), ("fused-head+liger", True)):
        loss, grads, details = trainer_step(config(name, use_liger_kernel=liger), batch)
        print(f"{name}: loss {loss:.6f} at {time.perf_counter() - started:.0f}s", flush=True)
        results["cases"][name] = {"loss": loss, "grad_rel_diff": grad_differences(plain_grads, grads), **details}
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
