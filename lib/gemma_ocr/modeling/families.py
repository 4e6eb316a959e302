"""The model families the project trains, merges and serves, in one registry, told apart by the checkpoint's config.

A family is found from the ``model_type`` of the checkpoint's ``config.json`` (never from its folder or hub name),
by :func:`family_of`. Each :class:`ModelFamily` holds what differs between Gemma 3 and Gemma 4: the architecture and
processor classes (what a merge writes), the chat turn markers (the end-of-turn token ends the answer and is the last
token the answer-only loss covers), the processor's extra input keys a training batch must carry, the image-token
budget setting, and where LoRA adapters go in each tower.

* **gemma3**: ``Gemma3ForConditionalGeneration`` (SigLIP tower, 256 tokens per 896 px image or crop),
  ``Gemma3Processor``; ``<start_of_turn>``/``<end_of_turn>``; ``token_type_ids`` (1 on image tokens); the image
  settings are the pan-and-scan ones (no token budget).
* **gemma4**: ``Gemma4ForConditionalGeneration`` (Gemma 4's own ViT, any aspect ratio), ``Gemma4Processor``;
  ``<|turn>``/``<turn|>``; ``mm_token_type_ids`` and ``image_position_ids`` (the tower needs them); the budget is
  the image processor's ``max_soft_tokens`` (70, 140, 280, 560 or 1120 image tokens). The vision projections are
  ``Gemma4ClippableLinear`` wrappers: LoRA goes on their inner ``.linear`` (PEFT cannot wrap the wrapper).

Other model types are refused with one line: Gemma 3n (``gemma3n``, a timm MobileNet vision tower), text-only
Gemma (``gemma3_text``, ``gemma4_text``), anything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT

__all__ = ["FAMILIES", "GEMMA3", "GEMMA4", "ModelFamily", "PAN_AND_SCAN_FIELDS", "family_named", "family_of",
           "family_of_model", "family_of_processor", "keep_base_fields", "read_model_config"]

#: Gemma 3 image processor settings training, the CER evaluation, merge and serving share (saved with the processor).
PAN_AND_SCAN_FIELDS = ("do_pan_and_scan", "pan_and_scan_max_num_crops", "pan_and_scan_min_crop_size",
                       "pan_and_scan_min_ratio_to_activate")
LANGUAGE_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LANGUAGE_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelFamily:
    """What the project needs to know of one vision-language model family (see the module docstring)."""

    name: str
    title: str
    model_types: tuple[str, ...]
    architecture: str  # the model class; a merge writes it as config.json's architectures
    processor_class: str  # the processor class; a merge writes it as processor_class
    start_of_turn: str
    end_of_turn: str  # ends the answer; the answer-only loss covers it
    token_keys: tuple[str, ...]  # per-token processor outputs a batch carries (padded with 0)
    image_keys: tuple[str, ...]  # per-image processor outputs a batch carries (concatenated like pixel_values)
    image_settings: tuple[str, ...]  # image processor settings saved with the processor and given to vLLM
    budget_setting: str | None  # the image processor's image-token budget setting (None: the family has none)
    budget_values: tuple[int, ...]
    vision_attention: tuple[str, ...]
    vision_mlp: tuple[str, ...]
    vision_suffix: str  # regex after a vision projection's name: the module LoRA wraps
    projector_module: str  # between the towers; trained in full with finetune_multimodal_projector
    liger: bool  # whether Liger's kernels exist for the family (liger-kernel's apply_liger_kernel_to_gemma3)
    merge_rtol: float  # the merge check's tolerance on the logits, relative to the largest (bf16 rounding of weights)
    thinking_switch: str | None = None  # the chat template's keyword that turns thinking on (OCR passes it False)
    thinking_channel: tuple[str, str] | None = None  # the special tokens around thinking text; never part of an answer
    eager_towers: tuple[str, ...] = ()  # sub-configs whose tower takes eager attention only (Gemma 4's audio)

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The processor's extra input keys a training batch must carry besides input_ids, attention_mask, pixels."""
        return self.token_keys + self.image_keys

    def lora_targets(self) -> dict[str, tuple[str, ...]]:
        """Module names LoRA can wrap, by tower."""
        return {"language": LANGUAGE_ATTENTION + LANGUAGE_MLP, "vision": self.vision_attention + self.vision_mlp}

    def language_regex(self, names: tuple[str, ...]) -> str:
        return rf".*language_model.*\.({'|'.join(re.escape(n) for n in names)})"

    def vision_regex(self, names: tuple[str, ...]) -> str:
        return rf".*vision_tower.*\.({'|'.join(re.escape(n) for n in names)}){self.vision_suffix}"

    def explicit_lora_regex(self, names: list[str]) -> str:
        """The regex of explicit ``lora_target_modules`` names; a name the family lacks is one line naming its own."""
        targets = self.lora_targets()
        unknown = [n for n in names if n not in targets["language"] + targets["vision"]]
        if unknown:
            raise GemmaOcrError(
                f"lora_target_modules {unknown} are not modules of a {self.title} model; it has "
                f"language: {', '.join(targets['language'])}; vision: {', '.join(targets['vision'])}")
        language = tuple(n for n in names if n in targets["language"])
        vision = tuple(n for n in names if n in targets["vision"])
        parts = ([self.language_regex(language)] if language else []) + ([self.vision_regex(vision)] if vision else [])
        return "|".join(f"(?:{p})" for p in parts)

    def attention_implementation(self, implementation: str, model_config: Mapping[str, Any]) -> str | dict[str, str]:
        """``implementation`` for every tower, or per sub-config where a tower of the checkpoint takes eager only.

        A real Gemma 4 E2B/E4B ships an audio tower that refuses SDPA: its towers get ``implementation`` and the
        audio tower eager (OCR never runs it), so the checkpoint loads with the setting the training asked for.
        """
        eager = [k for k in self.eager_towers if model_config.get(k)]
        if not eager or implementation == "eager":
            return implementation
        towers = [k for k, v in model_config.items() if k.endswith("_config") and isinstance(v, Mapping)]
        return {k: "eager" if k in eager else implementation for k in towers}

    def budget_kwargs(self, budget: int | None) -> dict[str, int]:
        """The processor keyword argument of an image-token budget (empty for None); one line for a wrong one."""
        if budget is None:
            return {}
        if self.budget_setting is None:
            raise GemmaOcrError(f"image_token_budget {budget}: a {self.title} model has no image-token budget "
                                "(leave it null; its image settings are the pan-and-scan ones)")
        if budget not in self.budget_values:
            raise GemmaOcrError(f"image_token_budget {budget}: a {self.title} model takes one of "
                                f"{', '.join(map(str, self.budget_values))} image tokens")
        return {self.budget_setting: budget}


GEMMA3 = ModelFamily(
    name="gemma3", title="Gemma 3", model_types=("gemma3",), architecture="Gemma3ForConditionalGeneration",
    processor_class="Gemma3Processor", start_of_turn="<start_of_turn>", end_of_turn="<end_of_turn>",
    token_keys=("token_type_ids",), image_keys=(), image_settings=PAN_AND_SCAN_FIELDS, budget_setting=None,
    budget_values=(), vision_attention=("q_proj", "k_proj", "v_proj", "out_proj"), vision_mlp=("fc1", "fc2"),
    vision_suffix="", projector_module="multi_modal_projector", liger=True, merge_rtol=2e-2,
)
GEMMA4 = ModelFamily(
    name="gemma4", title="Gemma 4", model_types=("gemma4",), architecture="Gemma4ForConditionalGeneration",
    processor_class="Gemma4Processor", start_of_turn="<|turn>", end_of_turn="<turn|>",
    token_keys=("mm_token_type_ids",), image_keys=("image_position_ids",), image_settings=("max_soft_tokens",),
    budget_setting="max_soft_tokens", budget_values=(70, 140, 280, 560, 1120),
    vision_attention=LANGUAGE_ATTENTION, vision_mlp=LANGUAGE_MLP, vision_suffix=r"\.linear",
    projector_module="embed_vision", liger=False,
    # unscaled attention over q/k-normed heads (scaling 1) turns the bf16 rounding of merged weights into logit
    # changes about 3x Gemma 3's (measured on the tiny model: 0.04-0.06 of a largest logit of 0.7)
    merge_rtol=1e-1, thinking_switch="enable_thinking", thinking_channel=("<|channel>", "<channel|>"),
    eager_towers=("audio_config",),
)
FAMILIES: tuple[ModelFamily, ...] = (GEMMA3, GEMMA4)
#: Model types refused with a reason of their own.
UNSUPPORTED = {
    "gemma3n": "Gemma 3n needs timm's MobileNet vision tower and is not supported",
    "gemma3_text": "a text-only Gemma 3 (no vision tower)",
    "gemma4_text": "a text-only Gemma 4 (no vision tower)",
}


def supported() -> str:
    return ", ".join(f"{f.name} ({f.title}, model_type {'/'.join(f.model_types)})" for f in FAMILIES)


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` ("gemma3", "gemma4")."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise GemmaOcrError(f"unknown model family {name!r}; choose one of {', '.join(f.name for f in FAMILIES)}")


def read_model_config(model_name: str) -> dict[str, Any]:
    """The config dict of a checkpoint: a local folder's config.json, else ``AutoConfig`` (hub id or cache)."""
    path = Path(model_name).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise GemmaOcrError(f"model folder {path} has no config.json (point --model-name at a Gemma checkpoint "
                                "folder)")
        try:
            return json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GemmaOcrError(f"{cfg_file}: unreadable config ({e}); the checkpoint is damaged") from None
    if path.exists():
        raise GemmaOcrError(f"--model-name {model_name} is a file, not a checkpoint folder or hub id")
    try:
        from transformers import AutoConfig  # the start-up time of `gemma-ocr serve` and light commands

        return AutoConfig.from_pretrained(model_name).to_dict()
    except Exception as e:  # noqa: BLE001 - any failure here is "cannot find that model"
        raise GemmaOcrError(
            f"model {model_name!r} is neither a local folder nor a reachable hub id ({type(e).__name__}); "
            f"check --model-name (the default, the tiny reader, ships in {LAYOUT.reader})"
        ) from None


def family_of_model(config: Any) -> ModelFamily | None:
    """The registry's family of a loaded model's config (object or dict) by its ``model_type``; None when none."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def family_of(config_or_path: Any, where: str | None = None) -> ModelFamily:
    """The family of a checkpoint: its folder or hub id, its config dict or a transformers config object.

    An unsupported ``model_type`` (or a vision-language type without a vision tower) is one line naming the type
    found (in ``where``, default: the folder or hub id given, else "the model") and the supported families.
    """
    if isinstance(config_or_path, (str, Path)):
        where, config = where or str(config_or_path), read_model_config(str(config_or_path))
    elif isinstance(config_or_path, Mapping):
        where, config = where or "the model", dict(config_or_path)
    else:
        where, config = where or "the model", config_or_path.to_dict()
    family = family_of_model(config)
    if family is not None and config.get("vision_config") is not None:
        return family
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    found = f"model_type {model_type!r}" + (f", architectures {archs}" if archs else "")
    reason = UNSUPPORTED.get(model_type) or ("no vision tower" if model_type in {t for f in FAMILIES for t in
                                                                                f.model_types} else "")
    raise GemmaOcrError(f"{where} is not a supported vision-language model ({found}{': ' + reason if reason else ''}); "
                        f"supported families: {supported()}")


def family_of_processor(processor: Any) -> ModelFamily:
    """The family whose processor class ``processor`` is (a processor carries no model_type)."""
    name = type(processor).__name__
    for family in FAMILIES:
        if family.processor_class == name:
            return family
    raise GemmaOcrError(f"processor {name} is not one of a supported family ({supported()})")


def keep_base_fields(cfg: dict[str, Any], base_cfg: dict[str, Any]) -> list[str]:
    """Put the sub-config fields of the base's config.json that a saved ``cfg`` lacks back into it; return their names.

    transformers reads Gemma 4's ``text_config.global_head_dim`` as a constructor argument and does not write it
    again, but vLLM reads it (its default, 512, is wrong for a model that set another): a merged or fully fine-tuned
    checkpoint keeps its base's.
    """
    kept = []
    for section in ("text_config", "vision_config"):
        source, target = base_cfg.get(section), cfg.get(section)
        if isinstance(source, dict) and isinstance(target, dict):
            for key, value in source.items():
                if key not in target:
                    target[key] = value
                    kept.append(f"{section}.{key}")
    return kept
