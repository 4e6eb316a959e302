"""Loading a Gemma vision-language model and its processor for training, and attaching LoRA adapters.

The model family (Gemma 3 or Gemma 4, :mod:`gemma_ocr.modeling.families`) comes from the checkpoint's config; it
decides the LoRA targets, the projector and the image settings the processor is loaded with.

* dtype: bf16 on a GPU that supports it, fp32 otherwise (CPU); never fp16 (Gemma overflows to NaN).
* ``load_in_4bit``: NF4 with double quantisation and bf16 compute (QLoRA) through bitsandbytes; on a GPU, or on a
  CPU with bitsandbytes >= 0.48 (slow there: meant for checks and tiny models).
* ``backend="unsloth"``: unsloth's ``FastVisionModel`` loads the model and attaches LoRA (GPU only).
* ``train_mode="full"``: no adapters; every weight of the model trains (fp32 on a CPU, bf16 on a GPU).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.modeling.families import FAMILIES, ModelFamily, family_of, read_model_config
from gemma_ocr.training import speed

if TYPE_CHECKING:
    import torch

    from gemma_ocr.training.config import TrainConfig

log = logging.getLogger(__name__)

# torch, transformers and peft are imported inside the functions below: unsloth (backend "unsloth") must be imported
# before them (import_unsloth), and `gemma-ocr serve` imports this module (saved_image_settings) and starts without
# them.

#: Every image processor setting a family saves with its processor (pan-and-scan, the image-token budget).
IMAGE_SETTINGS = tuple(dict.fromkeys(name for family in FAMILIES for name in family.image_settings))


def compute_dtype() -> torch.dtype:
    """bf16 where CUDA supports it, fp32 elsewhere. fp16 is never used (Gemma overflows in fp16)."""
    import torch  # after unsloth (import_unsloth), and serve's start-up (see the top)

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


BNB_CPU_MIN_VERSION = "0.48"


def _bitsandbytes_version() -> str | None:
    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def four_bit_unavailable_reason() -> str | None:
    """Why ``load_in_4bit`` cannot run here (one line naming the fix), or None when it can."""
    import torch  # after unsloth (import_unsloth), and serve's start-up (see the top)

    bnb_version = _bitsandbytes_version()
    if bnb_version is None:
        return "load_in_4bit needs bitsandbytes: pip install 'gemma-ocr[gpu]' (or drop --load-in-4bit)"
    if not torch.cuda.is_available() and Version(bnb_version) < Version(BNB_CPU_MIN_VERSION):
        return (f"load_in_4bit without a CUDA GPU needs bitsandbytes >= {BNB_CPU_MIN_VERSION} (found {bnb_version}): "
                "pip install -U bitsandbytes, or drop --load-in-4bit")
    return None


def _quantization_config(config: TrainConfig, family: ModelFamily):
    import torch  # after unsloth (import_unsloth), and serve's start-up (see the top)

    reason = four_bit_unavailable_reason()
    if reason:
        raise GemmaOcrError(reason)
    if not torch.cuda.is_available():
        log.warning("load_in_4bit on the CPU: bitsandbytes' CPU kernels are slow; use a GPU for real training")
    from transformers import BitsAndBytesConfig  # after unsloth (import_unsloth), and serve's start-up (see the top)

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=[family.projector_module, "lm_head"],
    )


def keep_4bit_layout_trainable(model) -> int:
    """Keep every CPU ``Linear4bit`` of a model that trains in bitsandbytes' plain nf4 layout; return how many were switched.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for its inference kernel the first time the layer
    runs in eval mode without gradients (an evaluation during training does). That kernel has no backward pass: once
    repacked, no gradient flows through the layer (the LoRA layers below it stop learning, silently), and layers whose
    input width is not a multiple of the 64-value quantisation block cannot be repacked at all (a RuntimeError). On
    CUDA, and on CPUs without AVX512-BF16, nothing changes.
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):  # bitsandbytes.nn.Linear4bit on such a CPU
            module.support_avx512bf16_for_cpu = False
            switched += 1
    if switched:
        log.info("4-bit on this CPU: %d layers keep the trainable nf4 layout (AVX512-BF16 inference packing off)", switched)
    return switched


def _device_map() -> dict[str, int] | None:
    """One whole model per process: the local GPU under DDP, GPU 0 alone, nothing on the CPU."""
    import torch  # after unsloth (import_unsloth), and serve's start-up (see the top)

    if not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def image_kwargs(config: TrainConfig, family: ModelFamily) -> dict[str, Any]:
    """The image processor settings ``config`` gives for a ``family`` model (pan-and-scan for Gemma 3, the
    image-token budget for Gemma 4); a setting the family lacks is one line."""
    given = config.image_processor_kwargs()  # the pan-and-scan settings given
    lacking = [name for name in given if name not in family.image_settings]
    if lacking:
        raise GemmaOcrError(f"{lacking[0]}: a {family.title} model has no pan-and-scan setting (leave it null"
                            f"{'; set image_token_budget instead' if family.budget_setting else ''})")
    return {**given, **family.budget_kwargs(config.image_token_budget)}


def load_processor(model_name: str, image_kwargs: dict[str, Any] | None = None):
    """``AutoProcessor`` of the checkpoint, with a pad token set.

    ``image_kwargs`` (pan-and-scan settings or the image-token budget, :func:`image_kwargs`) are given to
    ``from_pretrained``: then every call of the processor uses them, and ``save_pretrained`` writes them where a
    reload (the merge, the embedded server) takes them from. Setting the image processor's attributes after
    loading is not enough: Gemma3Processor passes its own defaults (pan-and-scan off) to every call.
    """
    from transformers import AutoProcessor  # after unsloth (import_unsloth), and serve's start-up (see the top)

    try:
        processor = AutoProcessor.from_pretrained(model_name, **(image_kwargs or {}))
    except Exception as e:  # noqa: BLE001
        raise GemmaOcrError(f"cannot load the processor of {model_name} ({type(e).__name__}: {e})") from None
    tok = getattr(processor, "tokenizer", None)
    if tok is None or getattr(tok, "image_token_id", None) is None:
        raise GemmaOcrError(f"{model_name}: the processor is not a Gemma image-text processor (no image token)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor


def saved_image_settings(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The image settings (pan-and-scan, image-token budget) a checkpoint folder's processor config holds (what
    vLLM needs to be told)."""
    folder = Path(model_dir)
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise GemmaOcrError(f"{path}: unreadable processor config; the checkpoint is damaged") from None
        section = data.get(key) if key else data
        if isinstance(section, dict):
            return {k: section[k] for k in IMAGE_SETTINGS if section.get(k) is not None}
    return {}


def load_base_model(config: TrainConfig):
    """Load the model (transformers backend) in the right dtype/quantisation; return ``(model, processor)``."""
    # after unsloth (import_unsloth), and serve's start-up (see the top)
    import torch
    from transformers import AutoModelForImageTextToText  # (as torch above)

    model_config = read_model_config(config.model_name)
    family = family_of(model_config, where=str(config.model_name))
    kwargs: dict[str, Any] = {
        "attn_implementation": family.attention_implementation(speed.attn_implementation(config), model_config)}
    if config.load_in_4bit:
        kwargs["quantization_config"] = _quantization_config(config, family)
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = compute_dtype()
    device_map = _device_map()
    if device_map is not None:
        kwargs["device_map"] = device_map
    processor = load_processor(config.model_name, image_kwargs(config, family))
    try:
        model = AutoModelForImageTextToText.from_pretrained(config.model_name, **kwargs)
    except (OSError, ValueError) as e:
        raise GemmaOcrError(f"cannot load model {config.model_name} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if type(model).__name__ != family.architecture:
        raise GemmaOcrError(f"{config.model_name} loaded as {type(model).__name__}, not {family.architecture}")
    if config.load_in_4bit:
        keep_4bit_layout_trainable(model)
    log.info("loaded %s %s (%s%s)", family.title, config.model_name, str(kwargs["dtype"]).replace("torch.", ""),
             ", 4-bit nf4" if config.load_in_4bit else "")
    return model, processor


def lora_target_regex(config: TrainConfig, family: ModelFamily | None = None) -> str:
    """A PEFT ``target_modules`` regex over the towers and projections the config selects.

    Language layers live under ``language_model``, vision layers under ``vision_tower``, with the family's names
    (Gemma 4's vision projections: their inner ``.linear``); the regex is matched against full module names, so it
    selects the same modules in any size of the family. ``family``: read from ``config.model_name`` when not given.
    """
    family = family or family_of(config.model_name)
    if config.lora_target_modules:
        return family.explicit_lora_regex(list(config.lora_target_modules))
    targets = family.lora_targets()
    parts = []
    for tower, switch in (("language", config.finetune_language_layers), ("vision", config.finetune_vision_layers)):
        if not switch:
            continue
        attention, mlp = (targets[tower][:4], targets[tower][4:])
        names = (attention if config.finetune_attention_modules else ()) + (mlp if config.finetune_mlp_modules else ())
        if names:
            parts.append(family.language_regex(names) if tower == "language" else family.vision_regex(names))
    if not parts:
        raise GemmaOcrError("no LoRA target modules selected: enable finetune_language_layers or finetune_vision_layers")
    return "|".join(f"(?:{p})" for p in parts)


def lora_config(config: TrainConfig, family: ModelFamily | None = None):
    """The ``peft.LoraConfig`` for ``config`` (projector trained in full when finetune_multimodal_projector)."""
    from peft import LoraConfig  # after unsloth (import_unsloth), and serve's start-up (see the top)

    family = family or family_of(config.model_name)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        target_modules=lora_target_regex(config, family),
        modules_to_save=[family.projector_module] if config.finetune_multimodal_projector else None,
        task_type="CAUSAL_LM",
    )


def apply_lora(model, config: TrainConfig):
    """Wrap ``model`` with LoRA adapters (preparing a 4-bit model for k-bit training first).

    With ``config.fast_path`` a 4-bit model keeps its bf16 weights (no fp32 upcast) and a vision tower without
    LoRA runs without gradients (:mod:`gemma_ocr.training.speed`).
    """
    from peft import get_peft_model  # after unsloth (import_unsloth), and serve's start-up (see the top)

    if config.load_in_4bit:
        model = speed.prepare_kbit(model, config)
    peft_model = get_peft_model(model, lora_config(config, family_of(model.config)))
    speed.apply_after_lora(peft_model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    if trainable == 0:
        raise GemmaOcrError("LoRA matched no module of the model: check the finetune_* switches / lora_target_modules")
    log.info("LoRA r=%d alpha=%d: %d trainable of %d parameters (%.2f%%)",
             config.lora_r, config.lora_alpha, trainable, total, 100.0 * trainable / total)
    return peft_model


def import_unsloth() -> None:
    """Import unsloth, with one clear error where it cannot run.

    Call it before transformers, peft and trl are imported: unsloth patches them on import, and code
    imported earlier runs unpatched (slower, more memory; unsloth warns).
    """
    import torch  # serve's start-up (see the top); torch itself is no patch target of unsloth

    if importlib.util.find_spec("unsloth") is None:
        raise GemmaOcrError("backend 'unsloth' is not installed: pip install 'gemma-ocr[unsloth]' on a CUDA machine, "
                            "or use --backend transformers")
    if not torch.cuda.is_available():
        raise GemmaOcrError("backend 'unsloth' needs a CUDA GPU; use --backend transformers on this machine")
    import unsloth  # noqa: F401, PLC0415 - optional, heavy, GPU only


def load_unsloth_model(config: TrainConfig):
    """Load and LoRA-wrap the model with unsloth's ``FastVisionModel`` (GPU only); return ``(model, processor)``."""
    import_unsloth()
    if config.lora_target_modules:
        raise GemmaOcrError("lora_target_modules is not supported with backend 'unsloth'; use the finetune_* switches")
    family = family_of(config.model_name)
    settings = image_kwargs(config, family)  # a setting the family lacks fails before loading
    from unsloth import FastVisionModel  # noqa: PLC0415 - optional, heavy, GPU only

    model, processor = FastVisionModel.from_pretrained(
        config.model_name,
        load_in_4bit=config.load_in_4bit,
        dtype=None if config.load_in_4bit else compute_dtype(),
        max_seq_length=config.max_seq_length,
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
    )
    model = FastVisionModel.get_peft_model(
        model,
        finetune_vision_layers=config.finetune_vision_layers,
        finetune_language_layers=config.finetune_language_layers,
        finetune_attention_modules=config.finetune_attention_modules,
        finetune_mlp_modules=config.finetune_mlp_modules,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        random_state=config.seed,
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        modules_to_save=[family.projector_module] if config.finetune_multimodal_projector else None,
    )
    FastVisionModel.for_training(model)
    if settings:  # pan-and-scan or the image-token budget, given the way they last (load_processor)
        return model, load_processor(config.model_name, settings)
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, processor


def train_every_weight(model) -> int:
    """Make every parameter of ``model`` trainable (``train_mode: full``); return how many values train."""
    for param in model.parameters():
        param.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters())
    log.info("full training: all %d parameters train", trainable)
    return trainable


def load_model(config: TrainConfig):
    """The model to train + processor, per ``config.backend`` and ``config.train_mode``: ``(model, processor)``.

    ``lora``: the base with LoRA adapters attached (a PEFT model); ``full``: the base itself, every weight trainable.
    """
    if config.backend == "unsloth":
        return load_unsloth_model(config)
    speed.check_liger(config)  # before loading gigabytes of weights
    model, processor = load_base_model(config)
    model.config.use_cache = False
    if config.train_mode == "full":
        train_every_weight(model)
        speed.apply_liger_when_on(model, config)
        return model, processor
    return apply_lora(model, config), processor
