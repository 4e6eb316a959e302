#!/usr/bin/env python
"""LoRA supervised fine-tuning of a Gemma 3 vision-language model for OCR.

Settings: defaults < --config JSON < flags. Every config key has a flag (--learning-rate, --lora-r, ...).
Runs data-parallel unchanged under `accelerate launch --num_processes N core/sft_gemma.py ...`.
"""

from __future__ import annotations

import argparse
import json

from gemma_ocr.cli import run
from gemma_ocr.config import resolve_config
from gemma_ocr.config_cli import add_train_config_flags, flag_overrides


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="JSON/YAML config, e.g. configs/hyperparm_configs/default.json")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_train_config_flags(p)
    args = p.parse_args()
    config = resolve_config(args.config, flag_overrides(args))
    if args.print_config:
        print(json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        return

    from gemma_ocr.training import tune

    result = tune(config)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return

    def fmt(x):
        return f"{x:.4f}" if isinstance(x, float) else "n/a"

    print(f"global_step:     {result['global_step']}")
    print(f"train_loss:      {fmt(result['train_loss'])}")
    print(f"first_eval_loss: {fmt(result['first_eval_loss'])}")
    print(f"eval_loss:       {fmt(result['eval_loss'])}")
    print(f"adapter:         {result['output_dir']}")


if __name__ == "__main__":
    run(main)
