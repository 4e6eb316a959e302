"""Build the tiny random Gemma 3 VLM checkpoint (real architecture, processor and chat template) used by default."""

from __future__ import annotations

import argparse

from gemma_ocr.modeling.tiny import DEFAULT_TINY_MODEL_DIR, build_tiny_gemma3


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    p.add_argument("--output-dir", default=DEFAULT_TINY_MODEL_DIR, help="folder for the checkpoint")
    p.add_argument("--chars", default=None, help="extra characters to give their own tokens")
    p.add_argument("--chars-from", default=None, help="an OCR data JSON file whose transcriptions add characters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="square input size of the vision tower")
    args = p.parse_args()
    chars = args.chars or ""
    if args.chars_from:
        from gemma_ocr.data.records import load_records

        chars += "".join(sorted({c for r in load_records(args.chars_from) for c in r.text}))
    out = build_tiny_gemma3(args.output_dir, chars=chars or None, seed=args.seed, image_size=args.image_size)
    print(f"Wrote tiny Gemma 3 checkpoint to {out}")
