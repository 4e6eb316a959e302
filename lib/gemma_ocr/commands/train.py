"""LoRA supervised fine-tuning of a Gemma 3 vision-language model for OCR.

Settings: defaults < --config JSON/YAML < flags. Every config key is a flag: the OCR/LoRA settings
(--lora-r, --load-in-4bit, ...) and every TRL SFTConfig / transformers TrainingArguments field
(--learning-rate, --adam-beta2, --lr-scheduler-kwargs '{"num_cycles": 2}', --save-strategy, ...).
Runs data-parallel unchanged under `accelerate launch --num_processes N core/sft_gemma.py ...`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from gemma_ocr.settings import ConfigParser


def main() -> None:
    from gemma_ocr.config import TrainConfig

    p = ConfigParser(TrainConfig, ignore_keys=TrainConfig.ignored_keys, description=__doc__)
    p.add_argument("--print-config", action="store_true",
                   help="check the settings (the trainer's own checks too), print them and exit")
    config, args = p.parse_settings()

    from gemma_ocr.training.tune import sft_arguments, tune

    if args.print_config:
        with contextlib.redirect_stdout(sys.stderr):  # transformers prints notes at import; stdout is the JSON's
            sft_arguments(config, config.reporters, has_eval=bool(config.val_split), resuming=False)
        print(json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        return
    result = tune(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return

    def fmt(x):
        return f"{x:.4f}" if isinstance(x, float) else "n/a"

    print(f"global_step:     {result['global_step']}")
    print(f"train_loss:      {fmt(result['train_loss'])}")
    print(f"first_eval_loss: {fmt(result['first_eval_loss'])}")
    print(f"eval_loss:       {fmt(result['eval_loss'])}")
    print(f"adapter:         {result['output_dir']}")
