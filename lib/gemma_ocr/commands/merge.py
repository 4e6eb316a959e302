"""Merge a LoRA adapter into its Gemma 3 or Gemma 4 base as a 16-bit checkpoint that vLLM and transformers load, then verify it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_ocr.layout import LAYOUT
from gemma_ocr.merge.adapter import ATOL, merge_adapter
from gemma_ocr.flags import ConfigParser
from gemma_ocr.settings import Settings, setting

merging = functools.partial(setting, group="merge settings")


@dataclass
class MergeArguments(Settings):
    """Which adapter to merge into which base, where the merge goes, and how it is checked."""

    lora_dir: Path = merging(LAYOUT.adapter, "adapter folder written by sft_gemma.py")
    output_dir: Path = merging(LAYOUT.merged, "merged checkpoint folder")
    base_model: str | None = merging(None, "base checkpoint (null: base_model_name_or_path of the adapter's "
                                           "adapter_config.json)")
    backend: Literal["peft", "unsloth"] = merging("peft", "peft: merge_and_unload on a bf16 base; unsloth: "
                                                          "save_pretrained_merged (CUDA, unsloth installed)")
    verify: bool = merging(True, "check the merge: it loads base+adapter and the merged model in fp32 on the CPU, "
                                 "one at a time (--no-verify skips it)")
    skip_disk_check: bool = merging(False, "do not check free disk space first")
    overwrite: bool = merging(False, "replace an earlier merge in --output_dir (only once the new merge is complete "
                                     "and verified; a folder holding files the merge did not write, or an input, is "
                                     "never replaced)")


def main() -> None:
    args, _ = ConfigParser(MergeArguments, config_file=False, description=__doc__).parse_settings()
    r = merge_adapter(args.lora_dir, args.output_dir, base_model=args.base_model, backend=args.backend,
                      verify=args.verify, check_free_disk=not args.skip_disk_check, overwrite=args.overwrite)
    print(f"merged {args.lora_dir} into {r.base_model} ({r.parameters / 1e6:.1f}M params, {r.backend}) -> {r.output_dir} "
          f"({r.bytes_written / 1e9:.2f} GB, bf16 safetensors)")
    if r.verified:
        print(f"verified: no LoRA tensors, {r.architecture} + {r.processor_class}; logits vs base+adapter (fp32): "
              f"max |diff| {r.max_abs_diff:.3g} <= tolerance {r.tolerance:.3g} ({ATOL:g} + {r.relative_tolerance:g} x max|logit|); "
              f"adapter effect {r.adapter_effect:.3g}")
    else:
        print("not verified (--no-verify)")
    print(f"serve it: python core/serve.py {r.output_dir}")
    return 0
