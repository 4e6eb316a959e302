"""Command-line flags generated from :class:`~gemma_ocr.config.TrainConfig`: one ``--kebab-case`` flag per field.

Flags default to "not given" so that precedence stays defaults < config file < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Union

from gemma_ocr.config import TrainConfig

# flags named differently from their field (the seed's spelling), plus extra spellings
FLAG_NAMES: dict[str, list[str]] = {
    "output_dir": ["--lora-output-dir", "--output-dir"],
}
HELP: dict[str, str] = {
    "model_name": "base model: a Gemma 3 VLM folder or hub id (default models/tiny-gemma3, built on first use)",
    "input_data": "OCR data JSON [{image_path, ocr_text}]",
    "instruction": "the OCR instruction sent with each image",
    "output_dir": "where the adapter, processor, checkpoints and metrics go",
    "train_split": "training slice of the data file, e.g. train[:90%%]",
    "val_split": "validation slice, e.g. train[90%%:]; empty for no validation",
    "report_to": "trackers: none, wandb, tensorboard (W&B logs offline without WANDB_API_KEY)",
    "load_in_4bit": "nf4 QLoRA through bitsandbytes (GPU; a CPU needs bitsandbytes >= 0.48 and is slow)",
    "backend": "transformers (any machine) or unsloth (CUDA, unsloth installed)",
    "resume_from_checkpoint": "resume from the last checkpoint in the output dir, or from the given checkpoint folder",
    "lora_target_modules": "explicit module names for LoRA (overrides the --finetune-* switches)",
    "eval_steps": "evaluate every N steps (a float < 1 is a fraction of the run)",
    "fast_path": "vision tower without gradients, bf16 4-bit preparation, auto Liger kernels and dataloader workers",
    "use_liger_kernel": "Liger's Triton kernels for Gemma 3 (auto: on with CUDA and liger-kernel installed)",
    "activation_offloading": "memory-saving option: keep checkpointed activations in pinned host memory",
    "dataloader_num_workers": "collator worker processes (None: auto, up to 4 on a GPU machine, 0 on a CPU)",
}


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _optional(parse):
    def inner(text: str):
        return None if text.strip().lower() in {"none", "null"} else parse(text)

    inner.__name__ = getattr(parse, "__name__", "value")
    return inner


def _bool_or_path(text: str) -> bool | str:
    low = text.strip().lower()
    if low in {"true", "yes", "1", "last"}:
        return True
    if low in {"false", "no", "0", "none"}:
        return False
    return text


def _bool_or_auto(text: str) -> bool | str:
    low = text.strip().lower()
    if low in {"true", "yes", "1", "on"}:
        return True
    if low in {"false", "no", "0", "off"}:
        return False
    return low  # "auto", or a wrong value that validation names


def add_train_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per TrainConfig field (default: not given)."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        tp = hints[f.name]
        names = FLAG_NAMES.get(f.name, ["--" + f.name.replace("_", "-")])
        default = getattr(defaults, f.name)
        help_text = HELP.get(f.name, f.name.replace("_", " ")) + f" (default: {default!r})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        args = set(typing.get_args(tp)) if typing.get_origin(tp) in (Union, types.UnionType) else {tp}
        optional = type(None) in args
        args.discard(type(None))
        if f.name == "resume_from_checkpoint":
            parser.add_argument(*names, "--resume", nargs="?", const=True, type=_bool_or_path, **kw)
        elif args == {bool}:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif args == {bool, str}:
            parser.add_argument(*names, type=_bool_or_auto, metavar="{auto,true,false}", **kw)
        elif typing.get_origin(next(iter(args))) is list:
            parser.add_argument(*names, nargs="+", **kw)
        else:
            if args == {int}:
                parse = int
            elif args <= {int, float}:
                parse = _number
            elif args == {str}:
                parse = str
            else:  # pragma: no cover - every field type is covered above
                parse = str
            parser.add_argument(*names, type=_optional(parse) if optional else parse, **kw)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values given on the command line (fields left at "not given" are dropped)."""
    names = set(TrainConfig.field_names())
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
