"""Training configuration: the project's OCR/LoRA arguments plus every field of TRL's ``SFTConfig``.

:class:`OcrArguments` holds the project's own settings (data, model, LoRA, speed switches) and the
trainer settings whose meaning or type the project changes; :data:`TRAINER_DEFAULTS` the project's
defaults for other trainer settings. ``TrainConfig`` is one flat settings dataclass made of both and
of every other field of the installed TRL ``SFTConfig`` / transformers ``TrainingArguments``
(``adam_beta2``, ``lr_scheduler_kwargs``, ``neftune_noise_alpha``, ``save_strategy``, ``fsdp``, ...),
with their types, defaults and help. It is built on first use (it needs TRL) and read through the
configuration layer (:mod:`gemma_ocr.settings`): the same key in a JSON/YAML file and as a flag,
defaults < config file < flags, one-line errors. Keys starting with ``_`` are comments; a
``search_space`` block (the search config format) is ignored, so a search config also trains.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from gemma_ocr.layout import LAYOUT
from gemma_ocr.config_files import load_config
from gemma_ocr.modeling.families import GEMMA4, PAN_AND_SCAN_FIELDS
from gemma_ocr.settings import FieldError, Layer, Settings, did_you_mean, resolve, setting

__all__ = ["DEFAULT_INSTRUCTION", "OcrArguments", "TrainConfig", "load_config", "resolve_config",
           "train_config_class"]

DEFAULT_INSTRUCTION = "請給我 OCR 結果"
REPORTERS = ("none", "wandb", "tensorboard", "all")
SCHEDULERS_NEEDING_EVAL = ("reduce_lr_on_plateau", "greedy")  # transformers refuses them without an eval split
MAX_SEED = 2**32 - 1  # numpy's limit; transformers seeds numpy with it
DEFAULT_SAVE_STEPS = 50  # save_steps when not set and no metric chooses the best checkpoint
PROJECT, TRAINER = "OCR and LoRA settings", "trainer settings (TRL SFTConfig / transformers TrainingArguments)"

#: The project's defaults for trainer fields it does not redefine (types and help are TRL's / transformers').
TRAINER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,  # LoRA's usual rate (SFTConfig: 2e-5)
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "lr_scheduler_type": "linear",
    "optim": "adamw_torch",  # the fused variant is CUDA-only on older torch
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 1,  # one image at a time fits any GPU; raise it when memory allows
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 4,
    "gradient_checkpointing": True,
    "seed": 42,
    "eval_strategy": "steps",  # "no" when there is no validation split
    "eval_on_start": True,  # the loss before the first step: what training gained (not when resuming)
    "prediction_loss_only": True,
    "save_strategy": "steps",
    "save_total_limit": 2,
    "logging_first_step": True,
    "torch_compile": False,
    "activation_offloading": False,
    "ddp_find_unused_parameters": False,
}
#: Trainer fields the OCR training sets itself; another value is refused with the reason.
FIXED: dict[str, tuple[Any, str]] = {
    "fp16": (False, "is refused: Gemma 3 overflows to NaN in float16 (bf16 is used on a bf16 GPU, fp32 on a CPU)"),
    "max_length": (None, "is not used: the OCR collator truncates answers to max_seq_length (set that instead)"),
    "remove_unused_columns": (False, "must stay false: the OCR collator reads the image and text columns"),
    "label_names": (["labels"], "is set by the OCR collator (['labels'])"),
    "dataset_kwargs": ({"skip_prepare_dataset": True}, "is set by the OCR training (the collator prepares the data)"),
    "activation_checkpointing": (None, "is set from gradient_checkpointing (use that)"),
    "activation_checkpointing_kwargs": (None, "is set from gradient_checkpointing and activation_offloading"),
    "gradient_checkpointing_kwargs": (None, "is set from gradient_checkpointing and activation_offloading"),
}
SECRET_FIELDS = ("hub_token",)
#: What the trainer's evaluation reports (with the ``eval_`` prefix) besides the CER evaluation's metrics.
TRAINER_EVAL_METRICS = ("loss", "mean_token_accuracy")


#: A field of :class:`OcrArguments` (:func:`gemma_ocr.settings.setting` under the project's heading of ``--help``).
arg = functools.partial(setting, group=PROJECT)


@dataclass
class OcrArguments:
    """The project's own training settings, and the trainer settings whose meaning it changes."""

    # data and model
    model_name: str = arg(str(LAYOUT.reader), "base model: a Gemma 3 or Gemma 4 VLM folder or hub id (default: "
                                              "the shipped tiny reader)")
    input_data: str = arg(str(LAYOUT.non_test_json), "OCR data JSON [{image_path, ocr_text}]")
    instruction: str = arg(DEFAULT_INSTRUCTION, "the OCR instruction sent with each image")
    train_split: str = arg("train[:90%]", "training slice of the data file, e.g. train[:90%]")
    val_split: str = arg("train[90%:]", "validation slice, e.g. train[90%:]; empty for no validation")
    max_seq_length: int = arg(8192, "longest sample in tokens; the answer is cut, never the image tokens")
    load_in_4bit: bool = arg(False, "nf4 QLoRA through bitsandbytes (GPU; a CPU needs bitsandbytes >= 0.48 and is slow)")
    backend: Literal["transformers", "unsloth"] = arg("transformers", "transformers (any machine) or unsloth "
                                                                      "(CUDA, unsloth installed)")
    train_mode: Literal["lora", "full"] = arg("lora", "lora (adapters on a frozen base) or full (every weight; the "
                                                      "output folder is a whole model)")
    # LoRA
    lora_r: int = arg(16, "LoRA rank (lower = fewer parameters)")
    lora_alpha: int = arg(16, "LoRA scaling")
    lora_dropout: float = arg(0.0, "dropout on the LoRA layers, in [0, 1)")
    finetune_vision_layers: bool = arg(False, "LoRA on the vision tower")
    finetune_language_layers: bool = arg(True, "LoRA on the language model")
    finetune_attention_modules: bool = arg(True, "LoRA on attention projections")
    finetune_mlp_modules: bool = arg(True, "LoRA on MLP projections")
    finetune_multimodal_projector: bool = arg(False, "LoRA on the projector between vision tower and language model")
    lora_target_modules: list[str] | None = arg(None, "explicit module names for LoRA (overrides the finetune_* "
                                                      "switches)")
    warmup_ratio: float = arg(0.03, "warm-up as a fraction of the run, in [0, 1) (warmup_steps > 0 replaces it)")
    # speed and memory (gemma_ocr.training.speed documents each switch)
    fast_path: bool = arg(True, "vision tower without gradients, lean 4-bit preparation, auto Liger kernels and "
                                "dataloader workers")
    use_liger_kernel: bool | Literal["auto"] = arg("auto", "Liger's Triton kernels for Gemma 3 (auto: on with CUDA, "
                                                           "liger-kernel installed and fast_path)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = arg("sdpa", "attention kernel")
    bf16: bool | None = arg(None, "bf16 compute (null: on a bf16 GPU or with 4-bit, fp32 on a CPU; never fp16)")
    use_cpu: bool | None = arg(None, "train on the CPU (null: when there is no CUDA; also makes a multi-process "
                                     "launch use gloo DDP)")
    dataloader_num_workers: int | None = arg(None, "collator worker processes (null: up to 4 on a GPU machine, 0 on "
                                                   "a CPU)")
    dataloader_persistent_workers: bool | None = arg(None, "keep the workers between epochs (null: when there are "
                                                           "workers)")
    dataloader_pin_memory: bool | None = arg(None, "pinned host memory for batches (null: with CUDA)")
    torch_threads: int = arg(0, "torch CPU threads while training (0: torch's default, one per core; 1 is fastest "
                                "for a small model on a shared CPU)")
    # image processing (Gemma 3's pan-and-scan: a long line read as several crops besides the whole image);
    # null: the checkpoint's own setting. Saved with the processor, so merge and serving use the same.
    do_pan_and_scan: bool | None = arg(None, "pan-and-scan: besides the whole image, crops of a long or tall image "
                                             "each become image tokens too (null: the checkpoint's setting, off in "
                                             "Gemma 3)")
    pan_and_scan_max_num_crops: int | None = arg(None, "most crops per image (null: the checkpoint's, 4 in Gemma 3)")
    pan_and_scan_min_crop_size: int | None = arg(None, "smallest crop side in pixels (null: the checkpoint's, 256 in "
                                                       "Gemma 3)")
    pan_and_scan_min_ratio_to_activate: float | None = arg(None, "crop only images whose aspect ratio is at least "
                                                                 "this (null: the checkpoint's, 1.2 in Gemma 3)")
    # Gemma 4's image-token budget (its image processor's max_soft_tokens): an image of any shape is resized to at
    # most this many image tokens. Saved with the processor like pan-and-scan.
    image_token_budget: int | None = arg(None, "image tokens per image, Gemma 4 only: 70, 140, 280, 560 or 1120 "
                                               "(null: the checkpoint's setting, 280 in Gemma 4)")
    # evaluation, checkpoints, logging
    eval_steps: int | float = arg(50, "evaluate every N steps (a number in (0, 1) is a fraction of the run)")
    cer_eval_samples: int = arg(64, "validation images read by greedy generation at every evaluation: eval_cer, "
                                    "eval_f1 and their normalized forms beside eval_loss (0: off)")
    cer_eval_max_tokens: int | None = arg(None, "longest generated answer of that evaluation (null: twice the "
                                                "longest reference in tokens, plus 16)")
    metric_for_best_model: str | None = arg(None, "keep the checkpoint best by this metric as the output: eval_cer "
                                                  "(recommended for OCR), eval_f1, eval_loss, ... (null: the last one)")
    load_best_model_at_end: bool | None = arg(None, "end with the best checkpoint by metric_for_best_model (null: "
                                                    "when metric_for_best_model is set)")
    early_stopping_patience: int | None = arg(None, "stop after this many evaluations without an improvement of "
                                                    "metric_for_best_model (null: never stop early)")
    early_stopping_threshold: float = arg(0.0, "the smallest change of metric_for_best_model that counts as an "
                                               "improvement")
    save_steps: int | float | None = arg(None, "save a checkpoint every N steps (or a fraction of the run); null: at "
                                               "every evaluation (eval_steps) when the best checkpoint is kept by a "
                                               f"metric, else every {DEFAULT_SAVE_STEPS} steps")
    logging_steps: int | float = arg(10, "log every N steps (or a fraction of the run)")
    max_train_samples: int | None = arg(None, "use only the first N training samples")
    max_eval_samples: int | None = arg(None, "use only the first N validation samples")
    check_images: bool = arg(True, "open every image before training and name the broken ones")
    report_to: list[str] = arg(["none"], "trackers: none, wandb, tensorboard, all (W&B logs offline without "
                                         "WANDB_API_KEY)")
    wandb_project: str = arg("gemma-ocr", "W&B project")
    wandb_group: str | None = arg(None, "W&B run group")
    output_dir: str = arg(str(LAYOUT.adapter), "where the adapter, processor, checkpoints and metrics go",
                          aliases=["--lora-output-dir"])
    resume_from_checkpoint: bool | str | None = arg(False, "resume from the last checkpoint in output_dir (true), or "
                                                           "from the given checkpoint folder", aliases=["--resume"])


class TrainConfigMethods(Settings):
    """Validation and helpers of ``TrainConfig`` (which adds the trainer's fields to :class:`OcrArguments`)."""

    ignored_keys = frozenset({"search_space"})

    def validate(self) -> None:
        """Types (any field), then the project's ranges; raise :class:`FieldError` on the first bad field."""
        super().validate()
        c: Any = self
        if c.learning_rate <= 0:
            raise FieldError("learning_rate", f"must be > 0, got {c.learning_rate}")
        if c.max_steps == 0 or c.max_steps < -1:
            raise FieldError("max_steps", f"must be > 0, or -1 to train for num_train_epochs, got {c.max_steps}")
        if c.num_train_epochs < 0 or (c.num_train_epochs == 0 and c.max_steps == -1):
            raise FieldError("num_train_epochs", f"must be > 0 (or set max_steps > 0), got {c.num_train_epochs}")
        c.at_least(1, "lora_r", "lora_alpha", "per_device_train_batch_size", "per_device_eval_batch_size",
                   "gradient_accumulation_steps", "max_seq_length")
        for name, meaning in (("save_total_limit", "keep every checkpoint"), ("max_train_samples", "use them all"),
                              ("max_eval_samples", "use them all")):
            if getattr(c, name) is not None and getattr(c, name) < 1:
                raise FieldError(name, f"must be >= 1 (or null to {meaning}), got {getattr(c, name)}")
        for name in ("lora_dropout", "warmup_ratio"):
            if not 0.0 <= getattr(c, name) < 1.0:
                raise FieldError(name, f"must be in [0, 1), got {getattr(c, name)}")
        for name in ("eval_steps", "save_steps", "logging_steps"):
            steps = getattr(c, name)
            if steps is None:  # save_steps: follows eval_steps (checkpoint_steps)
                continue
            if steps <= 0 or (isinstance(steps, float) and steps >= 1):
                raise FieldError(name, f"must be a whole number of steps >= 1 or a fraction of the run in (0, 1), "
                                       f"got {steps}")
        c.at_least(0, "weight_decay", "max_grad_norm", "warmup_steps")
        c.at_least(0, "seed", most=MAX_SEED)
        # counts and seeds of the trainer that it takes unchecked (null: not set), where a negative one fails late
        trainer_counts = ("eval_accumulation_steps", "dataset_num_proc", "pad_to_multiple_of", "ddp_timeout",
                          "ddp_bucket_cap_mb")
        c.at_least(1, *(name for name in trainer_counts if isinstance(getattr(c, name, None), int)))  # not "auto"
        c.at_least(0, *(name for name in ("data_seed",) if hasattr(c, name)), most=MAX_SEED)
        if c.lr_scheduler_type in SCHEDULERS_NEEDING_EVAL and not c.val_split:
            raise FieldError("lr_scheduler_type", f"{c.lr_scheduler_type!r} needs evaluation: set val_split "
                                                  "or choose another scheduler")
        c.at_least(0, "torch_threads")
        if c.dataloader_num_workers is not None and c.dataloader_num_workers < 0:
            raise FieldError("dataloader_num_workers", f"must be >= 0 (or null for auto), got {c.dataloader_num_workers}")
        for r in c.report_to:
            if r not in REPORTERS:
                raise FieldError("report_to", f"entries must be among {', '.join(REPORTERS)}, got {r!r}")
        for name, (value, why) in FIXED.items():
            if hasattr(c, name) and getattr(c, name) != value:
                raise FieldError(name, why)
        if c.train_mode == "full" and c.load_in_4bit:
            raise FieldError("train_mode", "'full' trains every weight and cannot train 4-bit ones: drop load_in_4bit "
                                           "or use train_mode 'lora'")
        if c.train_mode == "full" and c.backend != "transformers":
            raise FieldError("train_mode", f"'full' runs with backend 'transformers' only, got {c.backend!r}")
        if not (c.finetune_vision_layers or c.finetune_language_layers or c.finetune_multimodal_projector
                or c.lora_target_modules):
            raise FieldError("finetune_language_layers", "and finetune_vision_layers are both false: nothing to train")
        if not (c.finetune_attention_modules or c.finetune_mlp_modules or c.lora_target_modules):
            raise FieldError("finetune_attention_modules", "and finetune_mlp_modules are both false: nothing to train")
        self._validate_evaluation()
        if not c.model_name:
            raise FieldError("model_name", "is empty")
        if not c.output_dir:
            raise FieldError("output_dir", "is empty (pass --lora-output-dir)")

    def _validate_evaluation(self) -> None:
        """The CER evaluation, pan-and-scan, the best checkpoint and early stopping."""
        # the start-up time of every light command that reads a setting: cer_eval brings the scoring (NumPy)
        from gemma_ocr.training.cer_eval import CER_METRICS, is_cer_metric

        c: Any = self
        c.at_least(0, "cer_eval_samples", "early_stopping_threshold")
        c.at_least(1, "cer_eval_max_tokens", "pan_and_scan_max_num_crops", "pan_and_scan_min_crop_size",
                   "early_stopping_patience")
        if c.pan_and_scan_min_ratio_to_activate is not None and c.pan_and_scan_min_ratio_to_activate <= 0:
            raise FieldError("pan_and_scan_min_ratio_to_activate",
                             f"must be > 0 (or null), got {c.pan_and_scan_min_ratio_to_activate}")
        if c.image_token_budget is not None and c.image_token_budget not in GEMMA4.budget_values:
            raise FieldError("image_token_budget", f"must be one of {', '.join(map(str, GEMMA4.budget_values))} (or "
                                                   f"null for the checkpoint's), got {c.image_token_budget}")
        metric = c.metric_for_best_model
        known = [f"eval_{name}" for name in (*TRAINER_EVAL_METRICS, *CER_METRICS)]
        if metric is not None and f"eval_{metric.removeprefix('eval_')}" not in known:
            raise FieldError("metric_for_best_model", f"{metric!r} is not a metric of the evaluation (one of "
                                                      f"{', '.join(known)}){did_you_mean(metric, known)}")
        if is_cer_metric(metric) and not (c.cer_eval_samples and c.val_split):
            why = "cer_eval_samples is 0" if c.val_split else "there is no val_split"
            raise FieldError("metric_for_best_model", f"{metric!r} comes from the CER evaluation, but {why}: set "
                                                      "cer_eval_samples > 0 and a val_split, or choose eval_loss")
        if metric is not None and not c.val_split:
            raise FieldError("metric_for_best_model", f"{metric!r} needs evaluations: set a val_split")
        if c.early_stopping_patience is not None and metric is None:
            raise FieldError("early_stopping_patience", "watches metric_for_best_model, which is not set: set it "
                                                        "(eval_cer for OCR, or eval_loss)")
        if c.save_steps is not None and self.saves_at_evaluations() and not _is_multiple(c.save_steps, c.eval_steps):
            mixed = (c.save_steps < 1) != (c.eval_steps < 1)
            raise FieldError("save_steps", f"{c.save_steps} is not a multiple of eval_steps {c.eval_steps}"
                                           f"{' (one is a fraction of the run, the other steps)' if mixed else ''}: "
                                           f"the best checkpoint by {metric or 'eval_loss'} is chosen among those saved "
                                           "at an evaluation; set save_steps to a multiple of eval_steps, or leave "
                                           "save_steps out and it follows eval_steps")

    def keeps_best(self) -> bool:
        """Whether training ends with the best checkpoint by a metric (load_best_model_at_end, null: with a
        metric_for_best_model)."""
        c: Any = self
        return c.load_best_model_at_end if c.load_best_model_at_end is not None else c.metric_for_best_model is not None

    def saves_at_evaluations(self) -> bool:
        """Whether every saved checkpoint must be an evaluated one: the best is kept by a metric, and both
        evaluations and saves happen every so many steps (transformers' rule for load_best_model_at_end)."""
        c: Any = self
        return (self.keeps_best() and bool(c.val_split) and _strategy(c.eval_strategy) == "steps"
                and _strategy(c.save_strategy) == "steps")

    def checkpoint_steps(self) -> int | float:
        """``save_steps`` as set; when not set, ``eval_steps`` where checkpoints are saved at evaluations (the best
        is kept by a metric), else every :data:`DEFAULT_SAVE_STEPS` steps."""
        c: Any = self
        if c.save_steps is not None:
            return c.save_steps
        return c.eval_steps if self.saves_at_evaluations() else DEFAULT_SAVE_STEPS

    def image_processor_kwargs(self) -> dict[str, Any]:
        """The pan-and-scan settings given (not null), as the processor's keyword arguments."""
        return {name: getattr(self, name) for name in PAN_AND_SCAN_FIELDS if getattr(self, name) is not None}

    @property
    def reporters(self) -> list[str]:
        """``report_to`` with "none" removed and "all" expanded."""
        report_to: list[str] = self.report_to  # type: ignore[attr-defined]
        if "all" in report_to:
            return ["wandb", "tensorboard"]
        return [r for r in report_to if r != "none"]

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; a hub token is not written out."""
        data = super().to_dict()
        for name in SECRET_FIELDS:
            if data.get(name) is not None:
                data[name] = "<hidden>"
        return data

    def trainer_arguments(self) -> dict[str, Any]:
        """The values of every ``SFTConfig`` field, as set (``sft_arguments`` resolves the automatic ones)."""
        return {name: getattr(self, name) for name in sft_field_names()}


def _strategy(value: Any) -> str:
    """An eval/save strategy as its text ("steps"), whether given as text or as transformers' enum."""
    return str(getattr(value, "value", value))


def _is_multiple(steps: int | float, every: int | float) -> bool:
    """Whether saving every ``steps`` lands on evaluations every ``every`` (both steps, or both fractions of the
    run; transformers' own check of load_best_model_at_end)."""
    if steps >= 1 and every >= 1:
        return steps % every == 0
    if steps < 1 and every < 1:
        return round(steps * 1_000_000) % round(every * 1_000_000) == 0
    return False


@functools.cache
def sft_field_names() -> tuple[str, ...]:
    """The fields of the installed TRL ``SFTConfig`` (transformers' ``TrainingArguments`` included)."""
    from trl import SFTConfig  # the start-up time of light commands: TrainConfig is built on first use

    return tuple(f.name for f in dataclasses.fields(SFTConfig) if f.init)


@functools.cache
def train_config_class() -> type:
    """``TrainConfig``: :class:`OcrArguments`, then every other ``SFTConfig`` field (defaults per TRAINER_DEFAULTS)."""
    from trl import SFTConfig  # the start-up time of light commands: TrainConfig is built on first use

    hints = typing.get_type_hints(SFTConfig)
    own = {f.name for f in dataclasses.fields(OcrArguments)}
    fields = []
    for f in dataclasses.fields(SFTConfig):
        if not f.init or f.name in own:
            continue
        meta = {**f.metadata, "group": TRAINER}
        if f.name in TRAINER_DEFAULTS or f.name in FIXED:
            value = TRAINER_DEFAULTS[f.name] if f.name in TRAINER_DEFAULTS else FIXED[f.name][0]
            spec = arg(value, meta.pop("help", ""), **meta)
        elif f.default_factory is not dataclasses.MISSING:
            spec = field(default_factory=f.default_factory, metadata=meta)
        else:
            spec = field(default=f.default, metadata=meta)
        fields.append((f.name, hints[f.name], spec))
    cls = dataclasses.make_dataclass("TrainConfig", fields, bases=(OcrArguments, TrainConfigMethods))
    cls.__module__, cls.__qualname__ = __name__, "TrainConfig"
    cls.__doc__ = ("Everything one fine-tuning run needs: the OCR/LoRA settings and every SFTConfig field. Field "
                   "names are the config keys and, with -, the flags.")
    return cls


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        return train_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if typing.TYPE_CHECKING:  # for type checkers: the OCR fields (the trainer's come at run time)
    class TrainConfig(OcrArguments, TrainConfigMethods):  # noqa: D101
        def __getattr__(self, name: str) -> Any: ...


def resolve_config(config_path: str | os.PathLike[str] | None = None,
                   overrides: dict[str, Any] | None = None) -> Any:
    """Defaults < file (``config_path``) < ``overrides`` (flags actually given; ``None`` values are skipped)."""
    cls = train_config_class()
    layers = [Layer(str(config_path), load_config(config_path))] if config_path else []
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        layers.append(Layer("flags", given))
    return resolve(cls, *layers, ignore=cls.ignored_keys)
