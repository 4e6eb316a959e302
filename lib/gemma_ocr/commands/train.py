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
from pathlib import Path

from gemma_ocr.outputs import OutputFolder, check_outputs_not_inputs
from gemma_ocr.flags import ConfigParser
from gemma_ocr.training.config import TrainConfig
from gemma_ocr.training.tune import CONFIG_FILE, METRICS_FILE, sft_arguments, tune

# What training writes at the top of its folder besides its settings and figures (the adapter and its processor): a
# folder holding one of them that training did not write is refused before any work (e.g. the repository's own
# README.md, with --lora-output-dir .).
ADAPTER_FILES = ("README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                 "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                 "tokenizer.model", "special_tokens_map.json")


def main() -> None:
    p = ConfigParser(TrainConfig, ignore_keys=TrainConfig.ignored_keys, description=__doc__)
    p.add_argument("--print-config", action="store_true",
                   help="check the settings (the trainer's own checks too), print them and exit")
    config, args = p.parse_settings()
    _check_output_dir(config)
    if args.print_config:
        with contextlib.redirect_stdout(sys.stderr):  # transformers prints notes at import; stdout is the JSON's
            sft_arguments(config, config.reporters, has_eval=bool(config.val_split), resuming=False)
        print(json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        return
    result = tune(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    _output_folder(config).record(_top_level_files())

    def fmt(x):
        return f"{x:.4f}" if isinstance(x, float) else "n/a"

    print(f"global_step:     {result['global_step']}")
    print(f"train_loss:      {fmt(result['train_loss'])}")
    print(f"first_eval_loss: {fmt(result['first_eval_loss'])}")
    print(f"eval_loss:       {fmt(result['eval_loss'])}")
    print(f"adapter:         {result['output_dir']}")


def _check_output_dir(config) -> None:
    """Before any work: the adapter's folder may be neither the base model's folder nor the data file, and the files
    training writes at its top may replace only an earlier run's (its train_config.json there, or the manifest)."""
    inputs = {"the base model (--model-name)": config.model_name if Path(config.model_name).exists() else None,
              "the training data (--input-data)": config.input_data}
    check_outputs_not_inputs(inputs, {"--lora-output-dir": config.output_dir}, holding=None)
    if not (Path(config.output_dir) / CONFIG_FILE).is_file():  # not the folder of an earlier run: nothing there is ours
        _output_folder(config).check_files(_top_level_files())


def _top_level_files() -> tuple[str, ...]:
    return (*ADAPTER_FILES, CONFIG_FILE, METRICS_FILE)


def _output_folder(config) -> OutputFolder:
    return OutputFolder(config.output_dir, "--lora-output-dir", "gemma-ocr train", overwrite_flag=None)
