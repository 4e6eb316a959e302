"""Merge a LoRA adapter into its Gemma 3 base as a 16-bit checkpoint that vLLM and transformers load, then verify it."""

from __future__ import annotations

import argparse

from gemma_ocr.layout import LAYOUT
from gemma_ocr.merge import ATOL, RTOL, merge_adapter


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    p.add_argument("--lora_dir", "--lora-dir", default=str(LAYOUT.adapter), help="adapter folder written by sft_gemma.py")
    p.add_argument("--output_dir", "--output-dir", default=str(LAYOUT.merged), help="merged checkpoint folder")
    p.add_argument("--base-model", default=None,
                   help="base checkpoint (default: base_model_name_or_path of the adapter's adapter_config.json)")
    p.add_argument("--backend", choices=("peft", "unsloth"), default="peft",
                   help="peft: merge_and_unload on a bf16 base; unsloth: save_pretrained_merged (CUDA, unsloth installed)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check (it loads base+adapter and the merged model in fp32 on the CPU, one at a time)")
    p.add_argument("--skip-disk-check", action="store_true", help="do not check free disk space first")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --output_dir (only once the new merge is complete and verified)")
    args = p.parse_args()
    r = merge_adapter(args.lora_dir, args.output_dir, base_model=args.base_model, backend=args.backend,
                      verify=not args.no_verify, check_free_disk=not args.skip_disk_check, overwrite=args.overwrite)
    print(f"merged {args.lora_dir} into {r.base_model} ({r.parameters / 1e6:.1f}M params, {r.backend}) -> {r.output_dir} "
          f"({r.bytes_written / 1e9:.2f} GB, bf16 safetensors)")
    if r.verified:
        print(f"verified: no LoRA tensors, Gemma3ForConditionalGeneration + Gemma3Processor; logits vs base+adapter (fp32): "
              f"max |diff| {r.max_abs_diff:.3g} <= tolerance {r.tolerance:.3g} ({ATOL:g} + {RTOL:g} x max|logit|); "
              f"adapter effect {r.adapter_effect:.3g}")
    else:
        print("not verified (--no-verify)")
    print(f"serve it: python core/serve.py {r.output_dir}")
    return 0
