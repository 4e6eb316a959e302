"""Merge a LoRA adapter into its Gemma 3 or Gemma 4 base and save a plain 16-bit checkpoint; verify the result.

The base is always loaded fresh in bf16 (never a 4-bit one: merging into quantized weights
loses the adapter's precision and writes an unloadable checkpoint). The output folder holds
bf16 safetensors, config (the family's architecture, ``Gemma3ForConditionalGeneration`` or
``Gemma4ForConditionalGeneration``), generation config, processor, tokenizer and chat template (the family's
processor_class, ``Gemma3Processor`` or ``Gemma4Processor``): vLLM and transformers load it like any checkpoint
of the family. The family is read from the base's config (:mod:`gemma_ocr.modeling.families`).

Verification (:func:`verify_merge`) reloads the saved folder with the Auto classes and checks:
no LoRA tensors left, the architecture and processor class, and that on a sample image+prompt
the merged model's logits match base+adapter (unmerged) within a tolerance, both run in fp32
on the CPU. The reference uses the same bf16-rounded base weights, so the difference measures the
merge and the bf16 rounding of the merged weights only.

The merge is written into a hidden staging folder beside the output and moved into place only once it
is complete and verified: a failed merge (full disk, wrong result) leaves the output folder as it was.
An output folder that holds files already is replaced only when asked (``overwrite``), and only when every file
in it was written by an earlier merge (its manifest lists them, see :class:`gemma_ocr.outputs.OutputFolder`): a folder
of other files, or one that holds the base model or the adapter, is refused before any work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from safetensors import SafetensorError, safe_open

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, check_writable, nearest_existing, read_json, reporting_write_errors
from gemma_ocr.layout import LAYOUT
from gemma_ocr.modeling.families import ModelFamily, family_of, keep_base_fields
from gemma_ocr.outputs import NamedPaths, OutputFolder
from gemma_ocr.training.config import DEFAULT_INSTRUCTION

log = logging.getLogger(__name__)

# torch, transformers and peft are imported inside the functions below: `gemma-ocr merge --help` imports this
# module and answers without them, and the unsloth backend imports unsloth before them (_require_unsloth).

BYTES_PER_PARAM = 2  # bf16
DISK_HEADROOM = 1.2
# |merged - reference| <= ATOL + rtol * max|reference| on the sample logits (bf16 rounding of merged weights); rtol is
# the family's (ModelFamily.merge_rtol: Gemma 3 2e-2, Gemma 4 1e-1).
ATOL = 1e-3
LORA_KEY_MARKERS = ("lora_", "base_layer", "modules_to_save", "original_module")


@dataclass
class MergeReport:
    """What the merge wrote and what its verification measured."""

    output_dir: str
    base_model: str
    backend: str
    parameters: int
    bytes_written: int
    verified: bool = False
    max_abs_diff: float | None = None
    tolerance: float | None = None
    relative_tolerance: float | None = None  # the family's share of the largest logit in the tolerance
    adapter_effect: float | None = None  # max |base+adapter - base| on the sample: the adapter is not a no-op
    lora_keys: int | None = None
    architecture: str | None = None  # the family's, written to config.json
    processor_class: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- inputs


def read_adapter_config(lora_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(lora_dir)
    if not path.is_dir():
        raise GemmaOcrError(f"adapter folder not found: {path} (train one first: python core/sft_gemma.py, or fix --lora_dir)")
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise GemmaOcrError(f"{path} has no adapter_config.json: not a LoRA adapter folder (fix --lora_dir)")
    cfg = read_json(cfg_path, "adapter config")
    if not isinstance(cfg, dict):
        raise GemmaOcrError(f"{cfg_path}: expected a JSON object")
    return cfg


def resolve_base_model(lora_dir: str | os.PathLike[str], base_model: str | None = None) -> str:
    """The base checkpoint: ``base_model`` if given, else the adapter's ``base_model_name_or_path``."""
    if base_model:
        return base_model
    base = read_adapter_config(lora_dir).get("base_model_name_or_path")
    if not base:
        raise GemmaOcrError(f"{Path(lora_dir) / 'adapter_config.json'} names no base_model_name_or_path; pass --base-model")
    return str(base)


def _local_config(base: str) -> dict[str, Any] | None:
    cfg = Path(base) / "config.json"
    return read_json(cfg, "model config") if cfg.is_file() else None


def count_parameters(base: str) -> int:
    """Parameters of the base model, counted on the meta device (no weights loaded)."""
    import torch  # lazy: see the note at the top
    from transformers import AutoConfig, AutoModelForImageTextToText  # lazy: see the note at the top

    try:
        config = AutoConfig.from_pretrained(base)
    except OSError as e:
        raise GemmaOcrError(f"base model {base!r} cannot be read ({str(e).splitlines()[0]}); pass --base-model with a local folder or hub id") from None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_disk(output_dir: str | os.PathLike[str], parameters: int) -> tuple[int, int]:
    """Fail unless the output's file system has ``parameters * 2 bytes * 1.2`` free; return (needed, free)."""
    need = int(parameters * BYTES_PER_PARAM * DISK_HEADROOM)
    probe = nearest_existing(output_dir)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise GemmaOcrError(
            f"not enough free disk for the merged model at {output_dir}: need {need / 1e9:.2f} GB "
            f"({parameters / 1e9:.2f}B params x {BYTES_PER_PARAM} bytes x {DISK_HEADROOM}), free {free / 1e9:.2f} GB "
            f"(free space or choose another --output_dir)"
        )
    log.info("disk: need %.2f GB, free %.2f GB at %s", need / 1e9, free / 1e9, probe)
    return need, free


def _check_not_quantized(base: str) -> None:
    cfg = _local_config(base)
    if cfg and (cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")):
        method = (cfg.get("quantization_config") or {}).get("quant_method", "quantized")
        raise GemmaOcrError(
            f"base model {base} is a {method} checkpoint; the merge needs the 16-bit base (pass --base-model "
            f"with the original bf16 folder or hub id)"
        )


def _load_processor(lora_dir: str, base: str, family: ModelFamily):
    """The processor saved beside the adapter (its chat template included), else the base's."""
    from transformers import AutoProcessor  # lazy: see the note at the top

    for source in (lora_dir, base):
        try:
            proc = AutoProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            continue
        if type(proc).__name__ == family.processor_class:
            if not getattr(proc, "chat_template", None) and source != base:
                continue
            return proc
    raise GemmaOcrError(f"no {family.processor_class} with a chat template in {lora_dir} or {base} (save the processor beside the adapter)")


# ---------------------------------------------------------------- merge


def merge_inputs(lora_dir: str | os.PathLike[str], base: str) -> NamedPaths:
    """The merge's inputs that are local folders (the base may be a hub id): the output may neither be nor hold them."""
    inputs: dict[str, str] = {"the adapter (--lora_dir)": str(lora_dir)}
    if Path(base).exists():
        inputs["the base model"] = base
    return inputs


def output_folder(output_dir: str | os.PathLike[str], overwrite: bool = False) -> OutputFolder:
    """The merged checkpoint's folder (:class:`~gemma_ocr.outputs.OutputFolder`, named ``--output_dir``)."""
    return OutputFolder(output_dir, "--output_dir", "gemma-ocr merge", overwrite=overwrite)


def check_output_dir(output_dir: str | os.PathLike[str], overwrite: bool = False, inputs: NamedPaths = {}) -> Path:
    """Fail with one line unless ``output_dir`` is missing, empty, or (with ``overwrite``) an earlier merge's folder
    holding no input, and its parent folder takes files (the staging folder goes there)."""
    out = Path(output_dir)
    output_folder(out, overwrite).check_replace(inputs)
    check_writable(out.resolve().parent, f"--output_dir {out}: its parent folder", folder=True)
    return out


def merge_adapter(lora_dir: str | os.PathLike[str] = LAYOUT.adapter, output_dir: str | os.PathLike[str] = LAYOUT.merged,
                  base_model: str | None = None, backend: str = "peft", verify: bool = True,
                  check_free_disk: bool = True, overwrite: bool = False) -> MergeReport:
    """Merge ``lora_dir`` into its bf16 base and save to ``output_dir``; verify unless ``verify`` is False.

    A non-empty ``output_dir`` is refused unless ``overwrite`` and it holds only an earlier merge's files; it is
    replaced only by a complete, verified merge.
    """
    lora_dir, output_dir = str(lora_dir), str(output_dir)
    read_adapter_config(lora_dir)
    if backend not in ("peft", "unsloth"):
        raise GemmaOcrError(f"--backend {backend!r}: choose peft or unsloth")
    base = resolve_base_model(lora_dir, base_model)
    out = Path(output_dir)
    inputs = merge_inputs(lora_dir, base)
    check_output_dir(out, overwrite, inputs)
    if backend == "unsloth":
        _require_unsloth()
    _check_not_quantized(base)
    family = family_of(base)
    params = count_parameters(base)
    if check_free_disk:
        check_disk(output_dir, params)
    folder = output_folder(out, overwrite)
    with folder.staging() as staging:
        if backend == "peft":
            _merge_peft(lora_dir, staging, base, out)
        else:
            _merge_unsloth(lora_dir, staging, out)
        _finish_checkpoint(staging, lora_dir, base, out, family)
        written = sum(f.stat().st_size for f in staging.glob("*") if f.is_file())
        report = MergeReport(output_dir=output_dir, base_model=base, backend=backend, parameters=params,
                             bytes_written=written, architecture=family.architecture,
                             processor_class=family.processor_class)
        if verify:
            verify_merge(str(staging), lora_dir, base, report, shown_as=output_dir)
        atomic_write_json(staging / "merge_report.json", report.to_dict())
        with _unchanged(out):
            folder.replace(staging, inputs)
    return report


@contextlib.contextmanager
def _unchanged(out: Path) -> Iterator[None]:
    """One line for a failed write of the merge (the output folder ``out`` stays as it was).

    safetensors reports a failed write as ``SafetensorError: ... I/O error: ... (os error 28)``: it counts too.
    """
    with reporting_write_errors(out, f"{out} is as it was"):
        try:
            yield
        except SafetensorError as e:
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None:
                raise
            number = int(code.group(1))
            raise OSError(number, os.strerror(number)) from None


def _merge_peft(lora_dir: str, staging: Path, base: str, out: Path) -> None:
    import torch  # lazy: see the note at the top
    from peft import PeftModel  # lazy: see the note at the top
    from transformers import AutoModelForImageTextToText  # lazy: see the note at the top

    device_map = "auto" if torch.cuda.is_available() else None
    log.info("loading base %s in bf16", base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16, device_map=device_map)
    log.info("applying adapter %s", lora_dir)
    model = PeftModel.from_pretrained(model, lora_dir)
    merged = model.merge_and_unload()
    merged = merged.to(torch.bfloat16)
    log.info("saving bf16 safetensors -> %s", out)
    with _unchanged(out):
        merged.save_pretrained(staging, safe_serialization=True, max_shard_size="5GB")


def _require_unsloth():
    try:
        from unsloth import FastVisionModel  # noqa: PLC0415
    except Exception as e:  # ImportError, or unsloth refusing to start without a GPU
        raise GemmaOcrError(
            f"--backend unsloth is not available here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"install it on a CUDA machine (pip install -e '.[unsloth]') or use --backend peft"
        ) from None
    return FastVisionModel


def _merge_unsloth(lora_dir: str, staging: Path, out: Path) -> None:
    # unsloth reads the base named in the adapter folder; load_in_4bit=False keeps it 16-bit for the merge.
    model, processor = _require_unsloth().from_pretrained(lora_dir, load_in_4bit=False)
    with _unchanged(out):
        model.save_pretrained_merged(str(staging), processor, save_method="merged_16bit")


def _finish_checkpoint(staging: Path, lora_dir: str, base: str, out: Path, family: ModelFamily) -> None:
    """Processor, chat template, generation config and a plain config of the ``family`` in ``staging`` (bound for
    ``out``)."""
    from transformers import GenerationConfig  # lazy: see the note at the top

    processor = _load_processor(lora_dir, base, family)
    try:
        generation = GenerationConfig.from_pretrained(base)
    except OSError:
        generation = None
        log.info("base %s has no generation_config.json; none written", base)
    with _unchanged(out):
        processor.save_pretrained(staging)
        if generation is not None:
            generation.save_pretrained(staging)
    cfg_path = staging / "config.json"
    cfg = read_json(cfg_path, "merged config")
    cfg["architectures"] = [family.architecture]  # exports that write a patched class name are unloadable elsewhere
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "bfloat16"
    cfg.pop("torch_dtype", None)
    keep_base_fields(cfg, _local_config(base) or {})
    atomic_write_json(cfg_path, cfg)
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        p = staging / name
        if p.is_file():
            data = read_json(p)
            if isinstance(data, dict) and "processor_class" in data and data["processor_class"] != family.processor_class:
                data["processor_class"] = family.processor_class
                atomic_write_json(p, data)


# ---------------------------------------------------------------- verification


def lora_keys(output_dir: str | os.PathLike[str]) -> list[str]:
    """Tensor names in the saved safetensors that belong to LoRA/PEFT wrappers (should be none)."""
    files = sorted(Path(output_dir).glob("*.safetensors"))
    if not files:
        raise GemmaOcrError(f"{output_dir}: no .safetensors weights were written")
    bad = []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            bad += [k for k in st.keys() if any(m in k for m in LORA_KEY_MARKERS)]
    return bad


def sample_inputs(processor, instruction: str = DEFAULT_INSTRUCTION, text: str = "Total: 1234"):
    """A rendered text line + instruction through the chat template: the inputs of the logit check."""
    image = Image.new("RGB", (160, 40), "white")
    ImageDraw.Draw(image).text((6, 12), text, fill="black")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]},
                {"role": "assistant", "content": [{"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False)
    return processor(text=prompt, images=[image], return_tensors="pt")


def _logits(model, inputs) -> "torch.Tensor":  # noqa: F821
    import torch  # lazy: see the note at the top

    with torch.no_grad():
        return model(**inputs).logits.float()


def verify_merge(output_dir: str, lora_dir: str, base: str, report: MergeReport | None = None,
                 shown_as: str | None = None) -> MergeReport:
    """Check the saved checkpoint (see module docstring); raise GemmaOcrError on any failure.

    ``shown_as`` names the folder in messages (the output folder, while ``output_dir`` is its staging copy).
    """
    import torch  # lazy: see the note at the top
    from peft import PeftModel  # lazy: see the note at the top
    from transformers import AutoModelForImageTextToText, AutoProcessor  # lazy: see the note at the top

    shown = shown_as or output_dir
    family = family_of(base)
    report = report or MergeReport(output_dir=output_dir, base_model=base, backend="peft", parameters=0, bytes_written=0)
    bad = lora_keys(output_dir)
    report.lora_keys = len(bad)
    if bad:
        raise GemmaOcrError(f"{shown}: {len(bad)} LoRA tensors left in the merged weights (e.g. {bad[0]}); the merge failed")
    cfg = json.loads((Path(output_dir) / "config.json").read_text())
    if cfg.get("architectures") != [family.architecture]:
        raise GemmaOcrError(f"{shown}/config.json: architectures {cfg.get('architectures')}, expected "
                            f"[{family.architecture!r}]")
    processor = AutoProcessor.from_pretrained(output_dir)
    if type(processor).__name__ != family.processor_class or not processor.chat_template:
        raise GemmaOcrError(f"{shown}: processor is {type(processor).__name__} (chat template: "
                            f"{bool(processor.chat_template)}), expected {family.processor_class} with one")
    inputs = sample_inputs(processor)

    # Reference: the same bf16 base, the adapter applied unmerged, all in fp32 on the CPU.
    ref_model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16).float().eval()
    base_logits = _logits(ref_model, inputs)
    ref_model = PeftModel.from_pretrained(ref_model, lora_dir).float().eval()
    ref_logits = _logits(ref_model, inputs)
    del ref_model
    merged = AutoModelForImageTextToText.from_pretrained(output_dir, dtype=torch.float32).eval()
    if type(merged).__name__ != family.architecture:
        raise GemmaOcrError(f"{shown} loads as {type(merged).__name__}, expected {family.architecture}")
    merged_logits = _logits(merged, inputs)
    del merged

    diff = (merged_logits - ref_logits).abs().max().item()
    tol = ATOL + family.merge_rtol * ref_logits.abs().max().item()
    report.max_abs_diff, report.tolerance, report.relative_tolerance = diff, tol, family.merge_rtol
    report.adapter_effect = (ref_logits - base_logits).abs().max().item()
    log.info("verify: max |merged - (base+adapter)| = %.3g (tolerance %.3g); adapter effect %.3g",
             diff, tol, report.adapter_effect)
    if not diff <= tol:
        raise GemmaOcrError(f"{shown}: merged logits differ from base+adapter by {diff:.4g} (> tolerance {tol:.4g}); the merge is wrong")
    report.verified = True
    return report
