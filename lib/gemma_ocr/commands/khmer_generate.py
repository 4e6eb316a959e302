"""Render Khmer-digit sequence images (1-8 digits, Noto Sans Khmer) with train/val splits and metadata.yaml."""

from __future__ import annotations

import argparse

from gemma_ocr.layout import LAYOUT


def main() -> None:
    from gemma_ocr.khmer_digits.generator import GeneratorConfig, export_ocr_json, generate_dataset

    d = GeneratorConfig()
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    p.add_argument("--output-dir", default=str(LAYOUT.khmer_data))
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--min-digits", type=int, default=d.min_digits)
    p.add_argument("--max-digits", type=int, default=d.max_digits)
    p.add_argument("--height", type=int, default=d.image_height, help="image height (the models take 32)")
    p.add_argument("--width", type=int, default=d.image_width, help="image width (the models take 128)")
    p.add_argument("--rotation", type=float, default=d.rotation, help="max rotation in degrees")
    p.add_argument("--blur", type=float, default=d.blur, help="max Gaussian blur radius")
    p.add_argument("--noise", type=float, default=d.noise, help="max noise std (0-255)")
    p.add_argument("--export-json", default=None, metavar="PATH",
                   help="also write a split as an OCR input file [{image_path, ocr_text}] (for evaluation)")
    p.add_argument("--export-split", default="val", choices=["train", "val"])
    args = p.parse_args()
    config = GeneratorConfig(n_train=args.n_train, n_val=args.n_val, seed=args.seed, min_digits=args.min_digits,
                             max_digits=args.max_digits, image_height=args.height, image_width=args.width,
                             rotation=args.rotation, blur=args.blur, noise=args.noise)
    meta = generate_dataset(args.output_dir, config)
    print(f"Wrote {args.n_train} train and {args.n_val} val images; metadata: {meta}")
    if args.export_json:
        path = export_ocr_json(meta, args.export_json, split=args.export_split)
        print(f"Wrote the {args.export_split} split as OCR input file {path}")
