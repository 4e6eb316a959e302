"""The speed and memory switches of a training run in one place: what each is, how it resolves, how it is applied.

The model loader (:mod:`gemma_ocr.modeling.loading`) and the trainer (:mod:`gemma_ocr.training.tune`) call
these functions; :func:`describe` says which switches a run has on. The switches: the attention implementation
(:func:`attn_implementation`), the default fast path (``TrainConfig.fast_path``, below), Liger kernels, TRL's
fused LM head, 4-bit preparation (:func:`prepare_kbit`), gradient/activation checkpointing and activation
offloading, dataloader workers (:func:`trainer_arguments`) and ``torch_compile``.

What it changes against plain transformers + PEFT, each change keeping the loss of a batch the same
(checked by tests/training/test_fast_path.py on a CPU and by benchmarks/train_throughput.py on a GPU):

* **No backward through a frozen vision tower.** transformers' ``enable_input_require_grads`` (called by
  gradient checkpointing and PEFT) marks the SigLIP patch embeddings as requiring gradients, so a plain
  run back-propagates through all vision layers at every image patch (4096 per 896 px image) although
  nothing there trains. With ``finetune_vision_layers`` false the tower runs under ``torch.no_grad``:
  its forward stays, its backward, recompute and saved activations go.
* **Lean 4-bit preparation.** PEFT's ``prepare_model_for_kbit_training`` casts every non-quantised
  weight (the 262k-row embedding, norms, the vision tower's non-linear parts) to fp32, which makes the
  residual stream fp32 too; the fast path only freezes the base weights and keeps them in bf16.
* **Fused LM head.** On CUDA, TRL's SFTTrainer computes the loss with its chunked log-prob kernel on the
  labelled positions only, never building the ``(batch, seq, 262208)`` logits. It is part of every run
  through :func:`gemma_ocr.training.tune` on a GPU; Liger's own fused linear cross-entropy is therefore
  left off (TRL refuses both at once). On a CPU the model's own loss is used, unless Triton's interpreter
  is on (``TRITON_INTERPRET=1``: the same kernels on CPU tensors, slowly; tests/training/test_triton_kernels.py
  checks both Triton halves of the fast path that way).
* **Liger kernels** (``use_liger_kernel``): Gemma 3's RMSNorm, GeGLU MLP and RoPE, SigLIP's LayerNorm as
  Triton kernels (liger-kernel >= 0.8.5, its public ``apply_liger_kernel_to_gemma3``), swapped in when the
  model is loaded (:func:`apply_liger`) rather than through TRL's ``use_liger_kernel``, which TRL 1.x
  deprecates. ``"auto"`` turns them on when CUDA and the package are there.
* **Data off the training loop**: the collator (image decoding, resizing to 896 px, tokenising) runs in
  dataloader worker processes on a GPU machine (``dataloader_num_workers``; auto = up to 4). transformers 5's
  ``Gemma3ImageProcessor`` is already its torchvision ("fast") backend.
* **No padding-free batches**: TRL's SFTTrainer refuses ``padding_free`` for vision datasets, and packing
  several samples into one row would need Gemma 3's bidirectional image-span mask per sample, which only the
  padded SDPA path builds. Every OCR sample carries 256 image tokens, so padding is a small share of a batch
  (the benchmark prints it).
* ``activation_offloading``: the memory-saving option; the activations gradient checkpointing keeps go to
  pinned host memory (transformers' offloaded checkpointing), or, without checkpointing, every saved
  activation (TRL's activation offloading).
* ``attn_implementation``: SDPA by default (it takes the bidirectional image-span mask Gemma 3 trains with);
  ``flash_attention_2`` on request, where the flash-attn package is installed.
* ``torch_compile``: compile the model (off by default; only worth it for long runs, the first steps
  pay the compile time). Batches vary in length, so it compiles twice (static shapes, then dynamic ones):
  on the tiny model on one CPU thread that took about 170 s, and 8 steps then ended within 0.3% of the
  eager run's validation loss.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import logging
import os
from typing import TYPE_CHECKING, Any

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.modeling.families import family_of

if TYPE_CHECKING:
    from gemma_ocr.training.config import TrainConfig

# torch, transformers and peft are imported inside the functions below: the model loader imports this module, and
# unsloth (backend "unsloth") must be imported before transformers and peft (modeling.loading.import_unsloth);
# `gemma-ocr serve` imports the loader too (saved_image_settings) and starts without them.

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 4
NO_GRAD_MARK = "_gemma_ocr_no_grad"


def cuda_available() -> bool:
    import torch  # after unsloth, and serve's start-up (see the top of this module)

    return torch.cuda.is_available()


def triton_interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``): slow, for checking them without a GPU."""
    try:
        import triton  # an optional extra (gemma-ocr[gpu]): its CPU interpreter checks the kernels without a GPU

        return bool(triton.knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def triton_kernels_run_on(device_type: str) -> bool:
    """Whether Triton kernels (TRL's fused LM head, Liger) can run on tensors of ``device_type``."""
    return device_type in ("cuda", "xpu") or (device_type == "cpu" and triton_interpreted())


def liger_available() -> bool:
    """Whether liger-kernel (and the Triton it needs) is importable."""
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def use_liger(config: TrainConfig) -> bool:
    """``use_liger_kernel`` resolved: "auto" -> fast path on, CUDA visible, liger-kernel installed."""
    choice = config.use_liger_kernel
    if choice == "auto":
        return bool(config.fast_path and config.backend == "transformers" and cuda_available() and liger_available())
    return bool(choice)


def check_liger(config: TrainConfig) -> None:
    """One clear error when Liger is asked for (``use_liger_kernel: true``) and cannot run here."""
    if not use_liger(config):
        return
    if not liger_available():
        raise GemmaOcrError("use_liger_kernel is on but liger-kernel is not installed: pip install 'gemma-ocr[gpu]' "
                            "(or set use_liger_kernel to auto/false)")
    if not triton_kernels_run_on("cuda" if cuda_available() else "cpu"):
        raise GemmaOcrError("use_liger_kernel is on but no CUDA GPU is visible: Liger's Triton kernels need one "
                            "(set use_liger_kernel to auto or false)")


def apply_liger(model) -> list[str]:
    """Swap Liger's Gemma 3 kernels into a (PEFT-wrapped) model; return the Liger module kinds now in it.

    Liger's fused linear cross-entropy stays off: TRL's fused LM head computes the loss (they exclude each
    other). Liger also patches transformers' Gemma 3 RoPE function for the whole process.
    """
    from liger_kernel.transformers import apply_liger_kernel_to_gemma3  # an optional extra (gemma-ocr[gpu])

    base = _base_model(model)
    apply_liger_kernel_to_gemma3(model=base, fused_linear_cross_entropy=False)
    return liger_modules(base)


def _base_model(model):
    """The transformers model inside a PEFT wrapper (``model`` itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def liger_modules(model) -> list[str]:
    """The kinds of Liger modules in ``model`` (Liger names the modules it patches ``Liger*``)."""
    return sorted({m._get_name() for m in model.modules() if m._get_name().startswith("Liger")})


def dataloader_workers(config: TrainConfig) -> int:
    """``dataloader_num_workers`` resolved: auto -> up to 4 workers (half the cores) on a GPU, 0 on a CPU."""
    if config.dataloader_num_workers is not None:
        return config.dataloader_num_workers
    if not (config.fast_path and cuda_available()):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cores // 2))


def gradient_checkpointing_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The trainer's checkpointing kwargs (non-reentrant; ``offload`` when asked, which the trainer pops)."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if config.activation_offloading and config.gradient_checkpointing:
        kwargs["offload"] = True
    return kwargs


def _renamed_checkpointing() -> bool:
    """Whether transformers names it ``activation_checkpointing`` (5.2x; ``gradient_checkpointing`` is deprecated)."""
    from transformers import TrainingArguments  # after unsloth, and serve's start-up (see the top of this module)

    return any(f.name == "activation_checkpointing" for f in dataclasses.fields(TrainingArguments))


def checkpointing_arguments(config: TrainConfig, enabled: bool) -> dict[str, Any]:
    """The trainer arguments that switch activation checkpointing, under the installed transformers' names."""
    prefix = "activation_checkpointing" if _renamed_checkpointing() else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": gradient_checkpointing_kwargs(config)}


def enable_checkpointing(model, config: TrainConfig) -> None:
    """Turn on activation checkpointing of ``model`` outside a trainer (offloaded when asked), as the trainer does."""
    kwargs = gradient_checkpointing_kwargs(config)
    offload = kwargs.pop("offload", False)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs, offload=offload)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, offload=offload)


def vision_tower_of(model):
    """The SigLIP tower of a (PEFT-wrapped) Gemma 3 model, or None."""
    inner = getattr(_base_model(model), "model", None)
    return getattr(inner, "vision_tower", None)


def freeze_vision_tower(model) -> bool:
    """Run the vision tower under ``torch.no_grad`` when none of its parameters trains; True when applied."""
    import torch  # after unsloth, and serve's start-up (see the top of this module)

    tower = vision_tower_of(model)
    if tower is None:
        return False
    if any(p.requires_grad for p in tower.parameters()):
        log.info("fast path: the vision tower has trainable parameters, it keeps its gradients")
        return False
    if getattr(tower, NO_GRAD_MARK, False):
        return True
    forward = tower.forward

    @functools.wraps(forward)
    def no_grad_forward(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)

    tower.forward = no_grad_forward
    setattr(tower, NO_GRAD_MARK, True)
    return True


def prepare_kbit_lean(model) -> None:
    """Freeze a 4-bit model's base weights for LoRA, keeping its non-quantised weights in bf16."""
    for param in model.parameters():
        param.requires_grad_(False)


def describe(config: TrainConfig) -> dict[str, Any]:
    """The resolved switches of a run (logged at start; the benchmark prints them)."""
    return {
        "fast_path": config.fast_path,
        "vision_no_grad": config.fast_path and not config.finetune_vision_layers and config.train_mode == "lora",
        "lean_kbit": config.fast_path and config.load_in_4bit,
        "liger_kernel": use_liger(config),
        "fused_lm_head": cuda_available() or triton_interpreted(),
        "attn_implementation": config.attn_implementation,
        "dataloader_num_workers": dataloader_workers(config),
        "activation_offloading": config.activation_offloading,
        "torch_compile": config.torch_compile,
    }


def attn_implementation(config: TrainConfig) -> str:
    """SDPA by default: it takes the bidirectional image-span mask Gemma 3 trains with; flash-attention on request."""
    if config.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise GemmaOcrError("attn_implementation flash_attention_2 needs the flash-attn package (pip install flash-attn), "
                            "or use the default sdpa")
    return config.attn_implementation


def prepare_kbit(model, config: TrainConfig):
    """Make a 4-bit model ready for LoRA: the lean way on the fast path (:func:`prepare_kbit_lean`), else PEFT's
    ``prepare_model_for_kbit_training`` (fp32 upcast, checkpointing as configured); return the model."""
    if config.fast_path:
        prepare_kbit_lean(model)
        return model
    from peft import prepare_model_for_kbit_training  # after unsloth, and serve's start-up (see the top)

    # PEFT renamed gradient_checkpointing_kwargs to activation_checkpointing_kwargs (the old name goes in 1.2)
    params = inspect.signature(prepare_model_for_kbit_training).parameters
    name = "activation_checkpointing_kwargs" if "activation_checkpointing_kwargs" in params \
        else "gradient_checkpointing_kwargs"
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                           **{name: {"use_reentrant": False}})


def apply_after_lora(peft_model, config: TrainConfig) -> None:
    """The switches applied once LoRA is attached: the frozen vision tower without gradients, Liger's kernels."""
    if config.fast_path and freeze_vision_tower(peft_model):
        log.info("fast path: the frozen vision tower runs without gradients")
    apply_liger_when_on(peft_model, config)


def apply_liger_when_on(model, config: TrainConfig) -> None:
    """Swap Liger's kernels into ``model`` when ``use_liger_kernel`` resolves on (:func:`use_liger`) and Liger has
    kernels for the model's family (Gemma 3; not Gemma 4: "auto" leaves them off, ``true`` is one line)."""
    if not use_liger(config):
        return
    family = family_of(_base_model(model).config)
    if not family.liger:
        if config.use_liger_kernel == "auto":
            log.info("fast path: Liger has no %s kernels; the model's own run", family.title)
            return
        raise GemmaOcrError(f"use_liger_kernel: Liger has no {family.title} kernels; set it to auto or false")
    log.info("fast path: Liger kernels %s", ", ".join(apply_liger(model)))


def trainer_arguments(config: TrainConfig, cuda: bool) -> dict[str, Any]:
    """The trainer arguments of the switches: checkpointing (under the installed transformers' names), activation
    offloading, Liger (already in the loaded model), the dataloader workers and their memory."""
    workers = dataloader_workers(config)
    checkpointing = config.gradient_checkpointing and config.backend != "unsloth"

    def auto(value, default):
        return default if value is None else value

    return dict(
        **checkpointing_arguments(config, checkpointing),
        # offloading without checkpointing: TRL moves every saved activation to the host
        activation_offloading=config.activation_offloading and not checkpointing,
        use_liger_kernel=False,  # the loaded model already has Liger's kernels when asked (apply_liger)
        dataloader_num_workers=workers,
        dataloader_persistent_workers=auto(config.dataloader_persistent_workers, workers > 0),
        dataloader_prefetch_factor=auto(config.dataloader_prefetch_factor, 2 if workers > 0 else None),
        dataloader_pin_memory=auto(config.dataloader_pin_memory, cuda),
    )
