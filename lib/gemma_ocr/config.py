"""Training configuration: one typed dataclass, JSON/YAML loading, validation, precedence.

Precedence is defaults < config file < command-line flags. Unknown keys and wrong types end in
one clear line (:class:`~gemma_ocr.errors.GemmaOcrError`) that names the field and the fix.
Keys starting with ``_`` are comments and are ignored; a ``search_space`` block (the search
config format) is ignored too, so a search config also works as a training config.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import read_json, read_yaml

DEFAULT_MODEL_NAME = "models/tiny-gemma3"
DEFAULT_INSTRUCTION = "請給我 OCR 結果"
BACKENDS = ("transformers", "unsloth")
REPORTERS = ("none", "wandb", "tensorboard", "all")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
IGNORED_KEYS = frozenset({"search_space"})
# fields whose values are members of a transformers enum: the installed version decides what is valid
TRANSFORMERS_CHOICES = {
    "optim": ("transformers.training_args", "OptimizerNames"),
    "lr_scheduler_type": ("transformers.trainer_utils", "SchedulerType"),
}
SCHEDULERS_NEEDING_EVAL = ("reduce_lr_on_plateau", "greedy")  # transformers refuses them without an eval split
MAX_SEED = 2**32 - 1  # numpy's limit; transformers seeds numpy with it


@dataclass
class TrainConfig:
    """Everything one LoRA fine-tuning run needs. Field names are the JSON keys and, with ``-``, the flags."""

    # data and model
    model_name: str = DEFAULT_MODEL_NAME
    input_data: str = "data/input/ocr_non_test.json"
    instruction: str = DEFAULT_INSTRUCTION
    train_split: str = "train[:90%]"
    val_split: str = "train[90%:]"
    max_seq_length: int = 8192
    load_in_4bit: bool = False
    backend: str = "transformers"
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    finetune_vision_layers: bool = False
    finetune_language_layers: bool = True
    finetune_attention_modules: bool = True
    finetune_mlp_modules: bool = True
    finetune_multimodal_projector: bool = False
    lora_target_modules: list[str] | None = None  # explicit module names; overrides the finetune_* switches
    # optimisation
    learning_rate: float = 2e-4
    num_train_epochs: float = 3.0
    max_steps: int = -1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    gradient_checkpointing: bool = True
    seed: int = 42
    # speed and memory (gemma_ocr.modeling.fast_path documents each switch)
    fast_path: bool = True  # vision tower without gradients, lean 4-bit preparation, auto Liger kernels and workers
    use_liger_kernel: bool | str = "auto"  # "auto": on with CUDA + liger-kernel (and fast_path)
    attn_implementation: str = "sdpa"
    activation_offloading: bool = False  # the memory-saving option: checkpointed activations in pinned host memory
    torch_compile: bool = False
    dataloader_num_workers: int | None = None  # None: auto (up to 4 on a GPU machine, 0 on a CPU)
    # evaluation, checkpoints, logging
    eval_steps: int | float = 50
    save_steps: int | float = 50
    logging_steps: int | float = 10
    save_total_limit: int | None = 2
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    check_images: bool = True
    report_to: list[str] = field(default_factory=lambda: ["none"])
    wandb_project: str = "gemma-ocr"
    wandb_group: str | None = None
    run_name: str | None = None
    output_dir: str = "models/gemma-ocr"
    resume_from_checkpoint: bool | str | None = False

    # ---------------------------------------------------------------- construction

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build a validated config from ``data`` (missing keys keep their defaults)."""
        if not isinstance(data, dict):
            raise GemmaOcrError(f"{source}: expected a JSON object of settings, got {type(data).__name__}")
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str) or key.startswith("_") or key in IGNORED_KEYS:
                continue
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
                raise GemmaOcrError(f"{source}: unknown key {key!r}{hint}")
            values[key] = _coerce(key, value, hints[key], source)
        config = cls(**values)
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied (types checked as in :meth:`from_dict`)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source="config")

    # ---------------------------------------------------------------- validation

    def validate(self, source: str = "config") -> None:
        """Check value ranges; raise one clear line on the first bad field."""

        def bad(name: str, why: str) -> GemmaOcrError:
            return GemmaOcrError(f"{source}: field {name!r} {why}")

        if self.learning_rate <= 0:
            raise bad("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise bad("max_steps", f"must be > 0, or -1 to train for num_train_epochs, got {self.max_steps}")
        if self.num_train_epochs < 0 or (self.num_train_epochs == 0 and self.max_steps == -1):
            raise bad("num_train_epochs", f"must be > 0 (or set max_steps > 0), got {self.num_train_epochs}")
        for name in ("lora_r", "lora_alpha", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "max_seq_length"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name, meaning in (("save_total_limit", "keep every checkpoint"), ("max_train_samples", "use them all"),
                              ("max_eval_samples", "use them all")):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, f"must be >= 1 (or null to {meaning}), got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        for name in ("eval_steps", "save_steps", "logging_steps"):
            steps = getattr(self, name)
            if steps <= 0 or (isinstance(steps, float) and steps >= 1):
                raise bad(name, f"must be a whole number of steps >= 1 or a fraction of the run in (0, 1), got {steps}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise bad("seed", f"must be in [0, {MAX_SEED}], got {self.seed}")
        if self.lr_scheduler_type in SCHEDULERS_NEEDING_EVAL and not self.val_split:
            raise bad("lr_scheduler_type", f"{self.lr_scheduler_type!r} needs evaluation: set val_split "
                                           "or choose another scheduler")
        for name in TRANSFORMERS_CHOICES:
            value = getattr(self, name)
            if value != _default(name) and value not in transformers_choices(name):
                raise bad(name, f"must be one of {', '.join(transformers_choices(name))}, got {value!r}")
        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.use_liger_kernel not in ("auto", True, False):
            raise bad("use_liger_kernel", f"must be true, false or \"auto\", got {self.use_liger_kernel!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise bad("attn_implementation", f"must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                                             f"got {self.attn_implementation!r}")
        if self.dataloader_num_workers is not None and self.dataloader_num_workers < 0:
            raise bad("dataloader_num_workers", f"must be >= 0 (or null for auto), got {self.dataloader_num_workers}")
        for r in self.report_to:
            if r not in REPORTERS:
                raise bad("report_to", f"entries must be among {', '.join(REPORTERS)}, got {r!r}")
        if not (self.finetune_vision_layers or self.finetune_language_layers or self.finetune_multimodal_projector
                or self.lora_target_modules):
            raise bad("finetune_language_layers", "and finetune_vision_layers are both false: nothing to train")
        if not (self.finetune_attention_modules or self.finetune_mlp_modules or self.lora_target_modules):
            raise bad("finetune_attention_modules", "and finetune_mlp_modules are both false: nothing to train")
        if not self.model_name:
            raise bad("model_name", "is empty")
        if not self.output_dir:
            raise bad("output_dir", "is empty (pass --lora-output-dir)")

    @property
    def reporters(self) -> list[str]:
        """``report_to`` with "none" removed and "all" expanded."""
        if "all" in self.report_to:
            return ["wandb", "tensorboard"]
        return [r for r in self.report_to if r != "none"]


def _default(name: str) -> Any:
    """The default value of a TrainConfig field."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


@functools.lru_cache(maxsize=None)
def transformers_choices(name: str) -> tuple[str, ...]:
    """The values the installed transformers accepts for ``name`` (a key of :data:`TRANSFORMERS_CHOICES`).

    Imported only for a value other than the field's default, which every version accepts.
    """
    module, enum = TRANSFORMERS_CHOICES[name]
    return tuple(member.value for member in getattr(importlib.import_module(module), enum))


# -------------------------------------------------------------------- type checking

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``tp``; returns the (lightly normalised) value."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # try exact kinds first so 1 stays an int for int | float
        for a in sorted(args, key=lambda a: a is float):
            ok, v = _matches(value, a)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str) and item is str:  # "wandb" or "wandb,tensorboard"
            return True, [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and all(_matches(v, item)[0] for v in value):
            return True, [_matches(v, item)[1] for v in value]
        return False, value
    return True, value


def _coerce(name: str, value: Any, tp: Any, source: str) -> Any:
    ok, out = _matches(value, tp)
    if not ok:
        raise GemmaOcrError(
            f"{source}: field {name!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return out


# -------------------------------------------------------------------- files and precedence

def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON (or .yaml/.yml) config file into a dict; one clear line when it is not an object."""
    path = Path(path)
    data = read_yaml(path, what="config file") if path.suffix in {".yaml", ".yml"} else read_json(path, what="config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GemmaOcrError(f"{path}: a config file must hold an object of settings, not a {type(data).__name__}")
    return data


def resolve_config(
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < file (``config_path``) < ``overrides`` (flags actually given; ``None`` values are skipped)."""
    merged: dict[str, Any] = {}
    source = "config"
    if config_path:
        file_values = load_config(config_path)
        TrainConfig.from_dict(file_values, source=str(config_path))  # report file errors against the file
        merged.update(file_values)
        source = str(config_path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged.update(given)
    return TrainConfig.from_dict(merged, source=source if not given else f"{source} + flags")
