#!/usr/bin/env python
"""LoRA training speed and memory of Gemma 3 / Gemma 4 on synthetic OCR batches: plain transformers + PEFT vs the project's paths.

Builds a random-weight model with a real architecture (--arch 4b / 12b: Gemma 3's public shapes, 896 px
SigLIP, 256 image tokens, 262k vocabulary; --arch gemma4-e2b / gemma4-e4b: Gemma 4's, 280 image tokens,
per-layer embeddings, KV sharing, see benchmarks/architectures.py; --arch tiny: the project's tiny model),
saves it to a work folder, renders synthetic OCR lines (gemma_ocr.data.synthetic) and times LoRA training steps (r16 on the
language tower's attention and MLP, gradient checkpointing) in each mode, each mode in a fresh process
so that peak memory is its own:

  plain-bf16   transformers + PEFT, bf16 LoRA, a plain forward/backward/AdamW loop      (baseline)
  plain-nf4    transformers + PEFT, 4-bit nf4 QLoRA (prepare_model_for_kbit_training), same loop (baseline)
  default      the project's default path (TrainConfig defaults: fast_path) through its SFT trainer
  default-nf4  the same with load_in_4bit
  lowmem-nf4   the memory-saving option: load_in_4bit + activation_offloading
  unsloth      unsloth FastVisionModel, 4-bit, its gradient checkpointing, the plain loop (when installed)

Models load through gemma_ocr.modeling.loading (from_pretrained, BitsAndBytesConfig nf4, apply_lora);
batches come from gemma_ocr.training.data.OcrCollator. The plain loops step over batches collated before
timing; the project's modes time trainer.train() end to end, data loading included. A loss line compares
each mode's loss on one fixed batch (LoRA weights set to the same seeded values) with its baseline.

    python benchmarks/train_throughput.py --arch 4b                          # all modes, one table (GPU)
    python benchmarks/train_throughput.py --arch 4b --modes plain-nf4,default-nf4 --steps 20
    python benchmarks/train_throughput.py --arch gemma4-e2b --modes plain-bf16,default   # Gemma 4 E2B (GPU)
    python benchmarks/train_throughput.py --arch tiny --batch-size 2 --steps 2 --warmup 1   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "lib") not in sys.path:
    sys.path.insert(0, str(ROOT / "lib"))

MODES: dict[str, dict[str, Any]] = {
    "plain-bf16": {"label": "transformers+PEFT bf16 LoRA (baseline)", "loop": "plain", "nf4": False},
    "plain-nf4": {"label": "transformers+PEFT nf4 QLoRA (baseline)", "loop": "plain", "nf4": True},
    "default": {"label": "project default path", "loop": "trainer", "nf4": False},
    "default-nf4": {"label": "project default path, nf4", "loop": "trainer", "nf4": True},
    "lowmem-nf4": {"label": "project memory-saving: nf4 + offload", "loop": "trainer", "nf4": True, "offload": True},
    "unsloth": {"label": "unsloth FastVisionModel 4-bit", "loop": "plain", "nf4": True, "unsloth": True},
}
BASELINE = {False: "plain-bf16", True: "plain-nf4"}
# Dense bf16 peak of the card (TFLOP/s, no sparsity), matched against torch.cuda.get_device_name().
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 125.0))
# Loss tolerance on the fixed batch: bf16 compute (any GPU mode, nf4 anywhere) vs fp32 (plain CPU modes).
BF16_LOSS_RTOL, FP32_LOSS_RTOL = 2e-2, 1e-4
TARGET_SPEEDUP, TARGET_MEMORY = 2.0, 0.5


# ------------------------------------------------------------------------------------------ shared helpers

def seed_lora(model, scale: float = 0.02) -> int:
    """Give every LoRA A/B matrix the same seeded random values in any mode (seeded by the parameter's name)."""
    import torch

    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." not in name and ".lora_B." not in name:
                continue
            key = name[name.index("layers."):] if "layers." in name else name
            gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            std = (1.0 / param.shape[1]) ** 0.5 if ".lora_A." in name else scale
            param.copy_((torch.randn(param.shape, generator=gen) * std).to(param.dtype))
            count += 1
    return count


def flops_per_sample(stats: dict[str, Any], tokens: float, tokens_sq: float, labels: float) -> float:
    """Model FLOPs one training sample needs (see FLOP_FORMULA)."""
    p, lv, dv = stats["patches_per_image"], stats["vision_layers"], stats["vision_hidden"]
    vision = 2 * stats["vision_params"] * p + 4 * lv * p * p * dv
    projector = 2 * stats["projector_params"] * stats["mm_tokens_per_image"]
    text = 2 * stats["text_params_no_embedding"] * tokens + 2 * stats["text_layers"] * tokens_sq * stats["text_attn_width"]
    head = 2 * stats["vocab_size"] * stats["text_hidden"] * labels
    return vision + 2 * (projector + text + head)


FLOP_FORMULA = (
    "MFU = FLOPs/sample x samples/s / peak bf16 dense FLOP/s, FLOPs/sample = vision forward "
    "[2*N_vision*P + 4*L_v*P^2*d_v, P=patches] (frozen tower: no backward counted) + 2 x text forward "
    "[2*N_text*T + 2*L_t*T^2*H*d_h (causal) + 2*V*D*labels + projector] (frozen-base LoRA: backward = input grads "
    "only ~ 1 forward); checkpointing recompute and plain paths' extra work (vision backward, full-vocab logits) "
    "are not counted."
)


def _records(data_json: Path) -> list[dict[str, str]]:
    from gemma_ocr.data.records import load_records

    return [{"image_path": r.image_path, "text": r.text} for r in load_records(data_json)]


# ------------------------------------------------------------------------------------------ worker (one mode)

def _device_memory() -> dict[str, float]:
    import torch

    if torch.cuda.is_available():
        return {"peak_alloc_gb": torch.cuda.max_memory_allocated() / 1e9,
                "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}
    import resource

    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _mode_config(spec: dict[str, Any], mode: str):
    from gemma_ocr.training.config import TrainConfig

    m = MODES[mode]
    steps = spec["warmup"] + spec["steps"]
    return TrainConfig(
        model_name=spec["model_dir"], input_data=spec["data_json"], output_dir=str(Path(spec["work_dir"]) / f"run-{mode}"),
        train_split="train", val_split="", max_train_samples=steps * spec["batch_size"],
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=1e-4, warmup_ratio=0.0, logging_steps=steps, save_steps=10**9, save_total_limit=None,
        report_to=["none"], lora_r=spec["lora_r"], lora_alpha=spec["lora_r"], seed=spec["seed"], check_images=False,
        load_in_4bit=m["nf4"], fast_path=m["loop"] == "trainer", activation_offloading=bool(m.get("offload")),
        backend="unsloth" if m.get("unsloth") else "transformers", gradient_checkpointing=True,
        use_liger_kernel="auto" if spec.get("liger", True) else False,
    )


def _fixed_batch(collator, records, batch_size):
    return collator(records[:batch_size])


def _to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _plain_loop(spec: dict[str, Any], mode: str) -> dict[str, Any]:
    """transformers + PEFT (or unsloth) and a plain forward/backward/AdamW loop over pre-collated batches."""
    import torch

    from gemma_ocr.training import speed as fast_path
    from gemma_ocr.modeling.loading import apply_lora, load_base_model, load_unsloth_model
    from gemma_ocr.training.data import OcrCollator

    config = _mode_config(spec, mode)
    if config.backend == "unsloth":
        model, processor = load_unsloth_model(config)
    else:
        model, processor = load_base_model(config)
        model.config.use_cache = False
        model = apply_lora(model, config)  # fast_path off: plain PEFT (prepare_model_for_kbit_training for nf4)
        fast_path.enable_checkpointing(model, config)  # non-reentrant, as plain PEFT recipes do
    device = next(p for p in model.parameters()).device
    records = _records(Path(spec["data_json"]))
    collator = OcrCollator(processor, config.instruction, config.max_seq_length)
    b, n = spec["batch_size"], spec["warmup"] + spec["steps"]
    batches = [collator(records[i * b:(i + 1) * b]) for i in range(n)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    weights_gb = torch.cuda.memory_allocated() / 1e9 if device.type == "cuda" else None
    start = None
    for i, batch in enumerate(batches):
        if i == spec["warmup"]:
            _sync()
            start = time.perf_counter()
        batch = _to_device(batch, device)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync()
    elapsed = time.perf_counter() - start
    memory = _device_memory()
    seed_lora(model)
    fixed = _to_device(_fixed_batch(collator, records, b), device)
    with autocast:
        fixed_loss = model(**fixed).loss.item()
    return {"elapsed_s": elapsed, "weights_gb": weights_gb, "fixed_loss": fixed_loss, **memory}


def _trainer_loop(spec: dict[str, Any], mode: str) -> dict[str, Any]:
    """The project's training path: gemma_ocr.training.tune.build_trainer + trainer.train(), timed by a callback."""
    import torch
    from transformers import TrainerCallback

    from gemma_ocr.training import speed as fast_path
    from gemma_ocr.training.data import OcrCollator, load_data
    from gemma_ocr.training.tune import build_trainer

    config = _mode_config(spec, mode)
    warmup = spec["warmup"]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.marks.append(time.perf_counter())

    timer = StepTimer()
    train_ds, _ = load_data(config)
    trainer, processor = build_trainer(config, train_ds, None, callbacks=[timer])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    weights_gb = torch.cuda.memory_allocated() / 1e9 if cuda else None
    trainer.train()
    memory = _device_memory()
    if len(timer.marks) != warmup + spec["steps"]:
        raise RuntimeError(f"expected {warmup + spec['steps']} steps, the trainer ran {len(timer.marks)}")
    elapsed = timer.marks[-1] - timer.marks[warmup - 1] if warmup else timer.marks[-1] - timer.marks[0]
    steps_timed = spec["steps"] if warmup else spec["steps"] - 1
    model = trainer.model_wrapped
    seed_lora(model)
    records = _records(Path(spec["data_json"]))
    fixed = trainer._prepare_inputs(_fixed_batch(OcrCollator(processor, config.instruction, config.max_seq_length),
                                                 records, spec["batch_size"]))
    model.train()
    with trainer.compute_loss_context_manager():
        fixed_loss = trainer.compute_loss(model, fixed).item()
    return {"elapsed_s": elapsed, "steps_timed": steps_timed, "weights_gb": weights_gb, "fixed_loss": fixed_loss,
            "switches": fast_path.describe(config), **memory}


def worker(mode: str, spec_path: Path, result_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    if MODES[mode].get("unsloth"):
        import unsloth  # noqa: F401 - must come before transformers/peft/trl

    import torch

    from gemma_ocr.io import atomic_write_json

    if not torch.cuda.is_available():
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    result = _plain_loop(spec, mode) if MODES[mode]["loop"] == "plain" else _trainer_loop(spec, mode)
    result.setdefault("steps_timed", spec["steps"])
    result["mode"] = mode
    from gemma_ocr.modeling.loading import compute_dtype

    result["weights"] = "nf4" if MODES[mode]["nf4"] else str(compute_dtype()).replace("torch.", "")
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    atomic_write_json(result_path, result)


# ------------------------------------------------------------------------------------------ parent

def _skip_reason(mode: str) -> str | None:
    import importlib.util

    import torch

    from gemma_ocr.modeling.loading import four_bit_unavailable_reason

    m = MODES[mode]
    if m.get("unsloth"):
        if not torch.cuda.is_available():
            return "needs CUDA"
        if importlib.util.find_spec("unsloth") is None:
            return "unsloth not installed"
    if m["nf4"] and four_bit_unavailable_reason():
        return "needs bitsandbytes (>= 0.48 on a CPU)"
    return None


def _peak_tflops(given: float | None) -> tuple[float | None, str]:
    import torch

    if given:
        return given, "--peak-tflops"
    if not torch.cuda.is_available():
        return None, "no GPU"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, name
    return None, f"{name}: unknown peak, pass --peak-tflops"


def _token_stats(spec: dict[str, Any]) -> dict[str, float]:
    """Mean non-pad tokens, tokens^2 and labelled tokens per sample over the samples the run uses, and the share of
    padding in its batches (what padding-free batches would save)."""
    from gemma_ocr.modeling.loading import load_processor
    from gemma_ocr.training.data import IGNORE_INDEX, OcrCollator
    from gemma_ocr.training.config import DEFAULT_INSTRUCTION

    collator = OcrCollator(load_processor(spec["model_dir"]), DEFAULT_INSTRUCTION)
    n = (spec["warmup"] + spec["steps"]) * spec["batch_size"]
    tokens, labels = [], []
    for rec in _records(Path(spec["data_json"]))[:n]:
        from gemma_ocr.data.images import open_image

        enc = collator.encode(open_image(rec["image_path"]), rec["text"])
        tokens.append(len(enc["input_ids"]))
        labels.append(sum(1 for x in enc["labels"] if x != IGNORE_INDEX))
    b = spec["batch_size"]
    padded = sum(max(tokens[i:i + b]) * len(tokens[i:i + b]) for i in range(0, n, b))  # positions incl. padding
    return {"tokens": sum(tokens) / n, "tokens_sq": sum(t * t for t in tokens) / n, "labels": sum(labels) / n,
            "pad_share": 1.0 - sum(tokens) / padded}


def _prepare(args, work: Path) -> dict[str, Any]:
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset
    from gemma_ocr.io import atomic_write_json
    from architectures import STATS_FILE, parameter_stats

    n = (args.warmup + args.steps) * args.batch_size
    records = generate_dataset(work / "data", SyntheticConfig(n_samples=max(n, args.batch_size), seed=args.seed))
    data_json = work / "data" / "input.json"
    write_records(records, data_json)
    name = (args.arch if args.arch.startswith("gemma") else f"gemma3-{args.arch}") + (
        f"-{args.layers}layers" if args.layers else "")
    model_dir = Path(args.model_dir) if args.model_dir else work / name
    if not (model_dir / STATS_FILE).is_file():
        t0 = time.time()
        if args.arch == "tiny":
            import torch
            from transformers import AutoModelForImageTextToText

            from gemma_ocr.modeling.tiny import build_tiny_gemma3

            build_tiny_gemma3(model_dir)
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
            atomic_write_json(model_dir / STATS_FILE, {"arch": "tiny", **parameter_stats(model)})
            del model
        else:  # in its own process, so that this one holds no GPU memory while the modes run
            cmd = [sys.executable, __file__, "--build", args.arch, "--model-dir", str(model_dir)]
            _run(cmd + (["--layers", str(args.layers)] if args.layers else []), "build", args.timeout)
        print(f"built {args.arch} model in {time.time() - t0:.1f} s -> {model_dir}", flush=True)
    spec = {"model_dir": str(model_dir), "data_json": str(data_json), "work_dir": str(work), "arch": args.arch,
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "lora_r": args.lora_r,
            "seed": args.seed, "threads": args.threads, "liger": not args.no_liger}
    spec["stats"] = json.loads((model_dir / STATS_FILE).read_text())
    return spec


def _run(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail[0][:300]}")
    return proc


def _fork_worker(mode: str, spec_path: Path, result_path: Path, log_path: Path, timeout: float) -> None:
    """Run one mode in a forked child (no CUDA: the parent never touches a GPU on this path)."""
    import multiprocessing

    def target():
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            worker(mode, spec_path, result_path)

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=False)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        raise RuntimeError(f"{mode} ran past {timeout:.0f} s")
    if proc.exitcode != 0:
        lines = [l for l in log_path.read_text(errors="replace").splitlines() if l.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"{mode} failed (exit {proc.exitcode}): {lines[0][:300]}")


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(spec: dict[str, Any], results: dict[str, dict[str, Any]], peak: float | None, peak_src: str) -> list[str]:
    """The table, the loss lines and the targets, as printed lines."""
    tok = spec["token_stats"]
    fps = flops_per_sample(spec["stats"], tok["tokens"], tok["tokens_sq"], tok["labels"])
    gpu = any("peak_alloc_gb" in r for r in results.values() if "error" not in r)
    mem_head = "peak alloc GB | peak reserved GB" if gpu else "peak host RSS GB | (GPU only)"
    lines = [f"| mode | path | weights | samples/s | tokens/s | {mem_head} | MFU |", "|---|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        label = MODES[mode]["label"]
        if "skipped" in r or "error" in r:
            lines.append(f"| {mode} | {label} | | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        sps = spec["batch_size"] * r["steps_timed"] / r["elapsed_s"]
        r["samples_per_s"], r["tokens_per_s"] = sps, sps * tok["tokens"]
        r["mfu"] = fps * sps / (peak * 1e12) if peak else None
        mem = (r.get("peak_alloc_gb"), r.get("peak_reserved_gb")) if gpu else (r.get("peak_rss_gb"), None)
        lines.append(f"| {mode} | {label} | {r.get('weights', '-')} | {sps:.2f} | {r['tokens_per_s']:.0f} | {_fmt(mem[0])} | {_fmt(mem[1])} "
                     f"| {_fmt(r['mfu'] * 100 if r['mfu'] is not None else None, '.1f')}{'%' if r['mfu'] else ''} |")
    lines.append("")
    lines.append(f"FLOPs/sample {fps / 1e12:.3f} TFLOP (mean {tok['tokens']:.0f} tokens incl. image tokens, "
                 f"{tok['labels']:.1f} labelled; padding {100 * tok.get('pad_share', 0):.1f}% of batch positions); "
                 f"peak {peak or '-'} TFLOP/s ({peak_src})")
    lines.append(FLOP_FORMULA)
    lines.append("tokens/s = samples/s x mean non-pad tokens per sample. Plain loops time steps over pre-collated "
                 "batches; the project's modes time trainer.train() with data loading.")
    lines.append("")
    for mode, r in results.items():
        if "fixed_loss" not in r:
            continue
        base = BASELINE[MODES[mode]["nf4"]]
        rtol = BF16_LOSS_RTOL if gpu or MODES[mode]["nf4"] else FP32_LOSS_RTOL
        if base == mode:
            lines.append(f"loss {mode}: {r['fixed_loss']:.5f} (baseline)")
            continue
        ref = results.get(base, {}).get("fixed_loss")
        if ref is None:
            lines.append(f"loss {mode}: {r['fixed_loss']:.5f} (no {base} baseline in this run)")
            continue
        diff = abs(r["fixed_loss"] - ref) / abs(ref)
        r["loss_rel_diff"] = diff
        r["loss_ok"] = diff <= rtol
        lines.append(f"loss {mode}: {r['fixed_loss']:.5f} vs {base} {ref:.5f}: rel diff {diff:.2e} "
                     f"(tolerance {rtol:g}) {'OK' if diff <= rtol else 'MISMATCH'}")
    if gpu:
        lines.append("")
        lines.extend(_targets(results))
    return lines


def _targets(results: dict[str, dict[str, Any]]) -> list[str]:
    def get(mode, key):
        return results.get(mode, {}).get(key)

    out = []
    base_sps, base_mem = get("plain-nf4", "samples_per_s"), get("plain-nf4", "peak_alloc_gb")
    for mode in ("default", "default-nf4"):
        sps, mem = get(mode, "samples_per_s"), get(mode, "peak_alloc_gb")
        if None in (base_sps, base_mem, sps, mem):
            continue
        ok = sps >= TARGET_SPEEDUP * base_sps and mem <= TARGET_MEMORY * base_mem
        out.append(f"target {mode} vs plain-nf4 (>= {TARGET_SPEEDUP:g}x samples/s at <= {TARGET_MEMORY:g}x peak alloc): "
                   f"{sps / base_sps:.2f}x at {mem / base_mem:.2f}x -> {'MET' if ok else 'NOT MET'}")
    u_sps, u_mem = get("unsloth", "samples_per_s"), get("unsloth", "peak_alloc_gb")
    l_sps, l_mem = get("lowmem-nf4", "samples_per_s"), get("lowmem-nf4", "peak_alloc_gb")
    if None not in (u_sps, u_mem, l_sps, l_mem):
        ok = l_mem <= u_mem and l_sps > u_sps
        out.append(f"target lowmem-nf4 vs unsloth (peak alloc <= and faster): {l_mem:.2f} vs {u_mem:.2f} GB, "
                   f"{l_sps:.2f} vs {u_sps:.2f} samples/s -> {'MET' if ok else 'NOT MET'}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("tiny", "4b", "12b", "gemma4-e2b", "gemma4-e4b"), default="4b",
                   help="tiny: the project's tiny Gemma 3; 4b/12b: Gemma 3; gemma4-e2b/e4b: Gemma 4 (real widths)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, among {', '.join(MODES)}")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    p.add_argument("--layers", type=int, default=None,
                   help="4b/12b/gemma4-*: keep only this many layers per tower (real widths, images and vocabulary): "
                        "a quick check of the real shapes, on a CPU too; its speed says nothing of the full model")
    p.add_argument("--no-liger", action="store_true", help="the project's modes without Liger kernels")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the card (default: detected)")
    p.add_argument("--work-dir", default=None, help="model, data and runs (default: a temporary folder, removed)")
    p.add_argument("--model-dir", default=None, help="reuse a model folder built before (with its stats file)")
    p.add_argument("--json-out", default=None, help="write all figures to this JSON file")
    p.add_argument("--timeout", type=float, default=420, help="seconds per mode (and for building the model)")
    p.add_argument("--launch", choices=("auto", "spawn", "fork"), default="auto",
                   help="how each mode's process starts: a fresh interpreter (spawn; auto with CUDA: no CUDA state "
                        "is ever shared) or a fork of this process (auto without CUDA: the CPU smoke test, "
                        "without paying the imports again; peak RSS then includes the pages shared at the fork)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--build", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        worker(args.worker, Path(args.spec), Path(args.result))
        return 0
    if args.build:
        from architectures import build_random

        build_random(args.model_dir, args.build, seed=args.seed, layers=args.layers)
        return 0

    from gemma_ocr.errors import GemmaOcrError

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise GemmaOcrError(f"--modes: unknown {', '.join(unknown)}; choose among {', '.join(MODES)}")
    if args.steps < 2 or args.warmup < 0 or args.batch_size < 1:
        raise GemmaOcrError("--steps must be >= 2, --warmup >= 0, --batch-size >= 1")
    if args.layers is not None and (args.arch == "tiny" or args.layers < 1):
        raise GemmaOcrError("--layers takes a number >= 1 and goes with --arch 4b or 12b (Gemma 3), gemma4-e2b or "
                            "gemma4-e4b")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gemma-ocr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        import torch
        import transformers

        fork = args.launch == "fork" or (args.launch == "auto" and not torch.cuda.is_available())
        if fork:  # children share these imports instead of paying for them again
            import peft  # noqa: F401
            import trl  # noqa: F401

            # An OpenMP thread pool does not survive a fork (the child hangs in its first parallel op), so
            # this process never starts one: it only prepares data, each child sets its own threads.
            torch.set_num_threads(1)
        spec = _prepare(args, work)
        spec["token_stats"] = _token_stats(spec)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        results: dict[str, dict[str, Any]] = {}
        for mode in modes:
            reason = _skip_reason(mode)
            if reason:
                results[mode] = {"skipped": f"skipped: {reason}"}
                continue
            t0 = time.time()
            result_path = work / f"result-{mode}.json"
            try:
                if fork:
                    _fork_worker(mode, spec_path, result_path, work / f"log-{mode}.txt", args.timeout)
                else:
                    _run([sys.executable, __file__, "--worker", mode, "--spec", str(spec_path), "--result",
                          str(result_path)], mode, args.timeout)
                results[mode] = json.loads(result_path.read_text())
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                results[mode] = {"error": f"error: {e}"}
            print(f"{mode}: done in {time.time() - t0:.0f} s", flush=True)
        peak, peak_src = _peak_tflops(args.peak_tflops)
        lines = report(spec, results, peak, peak_src)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({args.threads} thread(s))"
        n = spec["stats"]["total_params"]
        size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
        stats = spec["stats"]
        arch = (f"{args.arch}, shallow: {stats['text_layers']} text and {stats['vision_layers']} vision layers"
                if stats.get("layers") else args.arch)
        images = stats.get("images") or f"{stats['image_size']} px images"
        title = "Gemma 4" if args.arch.startswith("gemma4") else "Gemma 3"
        header = (f"{title} {arch} ({size} params), LoRA r{args.lora_r} "
                  f"attention+MLP of the language tower, batch {args.batch_size}, {images}, {args.steps} timed steps after {args.warmup}; {device}; torch {torch.__version__}, "
                  f"transformers {transformers.__version__}")
        print("\n" + header + "\n" + "\n".join(lines))
        if args.json_out:
            from gemma_ocr.io import atomic_write_json

            atomic_write_json(args.json_out, {"header": header, "spec": spec, "results": results,
                                              "peak_tflops": peak, "flop_formula": FLOP_FORMULA})
        bad = [m for m, r in results.items() if "error" in r or r.get("loss_ok") is False]
        return 1 if bad else 0
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from gemma_ocr.cli import run

    run(main)
