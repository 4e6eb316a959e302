#!/usr/bin/env python
"""Accuracy and training time of the Khmer-digits CNN's default recipe on held-out synthetic data.

Renders train/val data (seed 42) and a held-out test set (another seed), trains the default preset
with the default recipe (gemma_ocr.khmer_digits.backend.DEFAULT_TRIAL_PARAMS) on --threads CPU
threads (default 1, the trainer's default), then predicts the held-out images from the saved checkpoint
and prints character and sequence accuracy, CER and F1. Target: char accuracy >= 0.99 and sequence
accuracy >= 0.95 within 10 minutes of training on 2 CPU cores. Training is deterministic: the same
command on the same machine gives the same figures; another thread count or CPU type moves the last
digits (the order of floating-point sums changes).

    python benchmarks/khmer_digits_accuracy.py                # --threads 1 --n-train 10000
    python benchmarks/khmer_digits_accuracy.py --set epochs=2 --set batch_size=32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from gemma_ocr.cli import run

CHAR_TARGET, SEQ_TARGET, TIME_TARGET = 0.99, 0.95, 600.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> int:
    from gemma_ocr.io import atomic_write_json
    from gemma_ocr.khmer_digits.backend import DEFAULT_TRIAL_PARAMS, evaluate_ocr_file, export_ocr_json, predict, train_trial
    from gemma_ocr.khmer_digits.generator import GeneratorConfig, generate_dataset, split_records
    from gemma_ocr.khmer_digits.metrics import OCRMetrics

    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="experiments/khmer_digits_benchmark")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: more spin-wait and multiply the CPU time on a busy machine)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a trial parameter")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)

    t0 = time.time()
    data_meta = work / "data" / "metadata.yaml"
    if not data_meta.is_file():
        generate_dataset(data_meta.parent, GeneratorConfig(n_train=args.n_train, n_val=args.n_val, seed=42))
    test_meta = work / "heldout" / "metadata.yaml"
    if not test_meta.is_file():
        generate_dataset(test_meta.parent, GeneratorConfig(n_train=0, n_val=args.n_test, seed=20260))
    test_json = export_ocr_json(test_meta, work / "heldout" / "ocr_test.json", split="val")
    data_time = time.time() - t0

    params = dict(DEFAULT_TRIAL_PARAMS, data=str(data_meta), num_threads=args.threads)
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = _value(value)
    print(f"training {params}")
    cpu0 = _cpu_seconds()
    result = train_trial(params, work / "run")
    train_cpu = _cpu_seconds() - cpu0
    for h in result["history"]:
        print(f"  epoch {int(h['epoch'])}: loss {h['train_loss']:.4f} val_char {h['val_char_accuracy']:.4f} "
              f"val_seq {h['val_seq_accuracy']:.4f} ({h['epoch_time']:.0f}s)")

    t1 = time.time()
    records = split_records(test_meta, "val")
    predictions = predict(result["checkpoint"], [r.image_path for r in records])
    metrics = OCRMetrics()
    metrics.update(predictions, [r.text for r in records])
    m = metrics.compute()
    doc = evaluate_ocr_file(result["checkpoint"], test_json)
    predict_time = time.time() - t1

    ok = m["char_accuracy"] >= CHAR_TARGET and m["seq_accuracy"] >= SEQ_TARGET and result["training_time"] <= TIME_TARGET
    summary = {
        "preset": params.get("model"), "params": params, "model_parameters": result["model_parameters"],
        "threads": args.threads, "n_train": args.n_train, "n_heldout": len(records),
        "data_generation_seconds": round(data_time, 1), "training_seconds": round(result["training_time"], 1),
        "training_cpu_seconds": round(train_cpu, 1), "load_average": list(os.getloadavg()),
        "epochs": result["epochs"], "heldout_char_accuracy": m["char_accuracy"], "heldout_seq_accuracy": m["seq_accuracy"],
        "heldout_edit_distance": m["edit_distance"], "heldout_cer": doc["overall_cer"], "heldout_f1": doc["overall_f1"],
        "val_char_accuracy": result["char_accuracy"], "val_seq_accuracy": result["seq_accuracy"],
        "predict_seconds": round(predict_time, 1), "target_met": ok,
    }
    atomic_write_json(work / "benchmark_result.json", summary)
    print(f"preset {summary['preset']} ({summary['model_parameters']:,} parameters), {args.threads} threads, "
          f"{args.n_train} training images, {result['epochs']} epochs")
    print(f"training time      {result['training_time']:.0f} s wall, {train_cpu:.0f} s CPU  (target <= {TIME_TARGET:.0f} s; "
          f"data generation {data_time:.0f} s apart; load average {os.getloadavg()[0]:.1f})")
    print(f"held-out char acc  {m['char_accuracy']:.4f}  (target >= {CHAR_TARGET})")
    print(f"held-out seq acc   {m['seq_accuracy']:.4f}  (target >= {SEQ_TARGET})")
    print(f"held-out CER/F1    {doc['overall_cer']:.4f} / {doc['overall_f1']:.4f}  ({len(records)} images)")
    print("TARGET MET" if ok else "TARGET NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main)
