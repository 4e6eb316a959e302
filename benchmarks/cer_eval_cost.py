#!/usr/bin/env python
"""The cost of the CER evaluation during training: seconds per evaluation against seconds per training step.

Trains through the project's own path (gemma_ocr.training.tune.build_trainer + trainer.train(), LoRA, the
default fast path) with an evaluation every --eval-steps steps, and times, per evaluation, the loss pass over
the validation split and the CER evaluation (greedy generation on --samples images, scoring), and each
training step; wall and CPU seconds (CPU seconds are the figure to compare on a shared machine).

  --arch reader   the shipped tiny reader learning digits in Noto Serif (a real learner: answers stop at
                  <end_of_turn>, so generation ends early once it reads) -- CPU
  --arch 4b|12b   a random-weight Gemma 3 of the real shape (896 px, 256 image tokens, 262k vocabulary);
                  a random model never ends its answer, so each evaluation generates --max-tokens for every
                  sample: an upper bound of the cost. GPU (bf16, or --nf4); --layers N for a shallow copy
                  that checks the code path at the real widths on a CPU.

    python benchmarks/cer_eval_cost.py                                   # the reader on a CPU (about a minute)
    python benchmarks/cer_eval_cost.py --arch 4b --work-dir /tmp/cer4b   # the 4B shape on a GPU
    python benchmarks/cer_eval_cost.py --arch 4b --nf4 --samples 64 --eval-batch-size 16 --max-tokens 48
    python benchmarks/cer_eval_cost.py --arch 4b --layers 2 --steps 4 --eval-steps 2 --samples 4 --max-tokens 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "lib") not in sys.path:
    sys.path.insert(0, str(ROOT / "lib"))

from gemma_ocr.layout import LAYOUT  # noqa: E402

READER = ROOT / LAYOUT.reader


def _model(args, work: Path) -> Path:
    if args.arch == "reader":
        return READER
    from architectures import STATS_FILE, build_random_gemma3

    folder = Path(args.model_dir) if args.model_dir else work / (f"gemma3-{args.arch}"
                                                                 + (f"-{args.layers}layers" if args.layers else ""))
    if not (folder / STATS_FILE).is_file():
        t0 = time.time()
        build_random_gemma3(folder, args.arch, layers=args.layers)
        print(f"built a random {args.arch} in {time.time() - t0:.0f} s -> {folder}", flush=True)
    return folder


def _data(args, work: Path) -> Path:
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SHIFTED_DIGITS, generate_dataset

    n = args.train_samples + args.samples
    records = generate_dataset(work / "data", dataclasses.replace(SHIFTED_DIGITS, n_samples=n, seed=args.seed))
    return write_records(records, work / "data" / "input.json")


def measure(args, work: Path) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    from gemma_ocr.training.config import TrainConfig
    from gemma_ocr.training.data import load_data
    from gemma_ocr.training.tune import build_trainer

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    model_dir, data = _model(args, work), _data(args, work)
    config = TrainConfig(
        model_name=str(model_dir), input_data=str(data), output_dir=str(work / "run"), load_in_4bit=args.nf4,
        train_split=f"train[:{args.train_samples}]", val_split=f"train[{args.train_samples}:]",
        max_steps=args.steps, eval_steps=args.eval_steps, save_strategy="no", logging_steps=args.eval_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=1, learning_rate=args.learning_rate, warmup_ratio=0.0, report_to=["none"],
        cer_eval_samples=args.samples, cer_eval_max_tokens=args.max_tokens, finetune_vision_layers=args.arch == "reader",
        seed=args.seed)
    steps: list[tuple[float, float]] = []
    cer: list[dict[str, float]] = []

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync()
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            sync()
            steps.append((time.perf_counter() - self.t, time.process_time() - self.c))

    trainer, processor = build_trainer(config, *load_data(config), callbacks=[StepTimer()])
    evaluation = trainer.cer_evaluation
    generate = evaluation.predict

    def timed_predict(model, rank=0, world_size=1):
        sync()
        t, c = time.perf_counter(), time.process_time()
        predictions = generate(model, rank, world_size)
        sync()
        tokens = sum(len(ids) for ids in processor.tokenizer([p for _, p in predictions], add_special_tokens=False)["input_ids"])
        cer.append({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "answer_tokens": tokens})
        return predictions

    evaluation.predict = timed_predict
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    history = [e for e in trainer.state.log_history if "eval_loss" in e]
    loss_eval = [e["eval_runtime"] - e["eval_cer_runtime"] for e in history]
    timed = steps[1:] or steps  # the first step pays the warm-up
    step_wall = statistics.median(s[0] for s in timed)
    step_cpu = statistics.median(s[1] for s in timed)
    cer_wall = statistics.median(e["wall_s"] for e in cer)
    cer_cpu = statistics.median(e["cpu_s"] for e in cer)
    return {
        "arch": args.arch, "layers": args.layers, "nf4": args.nf4, "model_dir": str(model_dir),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({args.threads} thread(s))",
        "samples": len(evaluation.image_paths), "eval_batch_size": args.eval_batch_size, "batch_size": args.batch_size,
        "max_new_tokens": evaluation.max_new_tokens, "evaluations": len(cer), "steps": len(steps),
        "train_step_s": step_wall, "train_step_cpu_s": step_cpu,
        "loss_eval_s": statistics.median(loss_eval), "cer_eval_s": cer_wall, "cer_eval_cpu_s": cer_cpu,
        "cer_eval_in_steps": cer_wall / step_wall, "cer_eval_cpu_in_steps": cer_cpu / step_cpu,
        "answer_tokens_per_eval": statistics.median(e["answer_tokens"] for e in cer),
        "overhead_at_eval_steps": {n: cer_wall / (n * step_wall) for n in (25, 50, 100)},
        "eval_cer": [round(e["eval_cer"], 4) for e in history], "eval_loss": [round(e["eval_loss"], 4) for e in history],
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }


def report(r: dict[str, Any]) -> str:
    shape = r["arch"] + (f", {r['layers']} layers per tower" if r["layers"] else "") + (", nf4" if r["nf4"] else "")
    lines = [
        f"CER evaluation cost: {shape} on {r['device']}; torch {r['versions']['torch']}, "
        f"transformers {r['versions']['transformers']}",
        f"{r['samples']} images, generation batch {r['eval_batch_size']}, up to {r['max_new_tokens']} new tokens "
        f"({r['answer_tokens_per_eval']:.0f} tokens of decoded answers per evaluation); training batch {r['batch_size']}; "
        f"medians over {r['evaluations']} evaluations and {r['steps']} steps",
        "",
        "| | wall s | CPU s |", "| --- | ---: | ---: |",
        f"| training step | {r['train_step_s']:.3f} | {r['train_step_cpu_s']:.3f} |",
        f"| loss evaluation (validation split) | {r['loss_eval_s']:.3f} | |",
        f"| CER evaluation | {r['cer_eval_s']:.3f} | {r['cer_eval_cpu_s']:.3f} |",
        "",
        f"one CER evaluation = {r['cer_eval_in_steps']:.1f} training steps (CPU: {r['cer_eval_cpu_in_steps']:.1f}); "
        "added to the training time at eval_steps " + ", ".join(f"{n}: {v:.1%}" for n, v in r["overhead_at_eval_steps"].items()),
        f"eval_cer by evaluation: {r['eval_cer']}",
    ]
    if r["peak_gpu_gib"] is not None:
        lines.append(f"peak GPU memory {r['peak_gpu_gib']:.1f} GiB")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("reader", "4b", "12b"), default="reader")
    p.add_argument("--layers", type=int, default=None, help="4b/12b: this many layers per tower (real widths)")
    p.add_argument("--nf4", action="store_true", help="4-bit QLoRA (bitsandbytes)")
    p.add_argument("--samples", type=int, default=64, help="images of the CER evaluation (cer_eval_samples)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="generation batch (per_device_eval_batch_size)")
    p.add_argument("--max-tokens", type=int, default=None, help="cer_eval_max_tokens (default: the project's rule)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch")
    p.add_argument("--train-samples", type=int, default=200)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--learning-rate", type=float, default=5e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--work-dir", default=None, help="model, data and run (default: a temporary folder)")
    p.add_argument("--model-dir", default=None, help="4b/12b: reuse a random model built before")
    p.add_argument("--json-out", default=None, help="write the figures to this JSON file")
    args = p.parse_args()
    if args.layers is not None and args.arch == "reader":
        p.error("--layers goes with --arch 4b or 12b")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cer-eval-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    result = measure(args, work)
    print(report(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from gemma_ocr.cli import run

    run(main)
