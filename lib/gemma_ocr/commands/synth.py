"""Render synthetic OCR text lines with real fonts into data/raw_data/ (images/ + ocr.json)."""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset, is_synthetic
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import check_writable
from gemma_ocr.outputs import MANIFEST, OutputFolder
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ArgumentParser, flag_value


def main() -> None:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", default=str(LAYOUT.raw_data))
    p.add_argument("--n-samples", type=flag_value(int), default=300)
    p.add_argument("--seed", type=flag_value(int), default=42)
    p.add_argument("--scripts", nargs="+", default=["latin", "khmer", "cjk"], choices=["latin", "khmer", "cjk"],
                   help="cjk is used only where a CJK font is installed")
    p.add_argument("--blur", type=flag_value(float), default=0.0, help="max Gaussian blur radius")
    p.add_argument("--noise", type=flag_value(float), default=0.0, help="max noise std (0-255)")
    p.add_argument("--rotation", type=flag_value(float), default=0.0, help="max rotation in degrees")
    p.add_argument("--force", action="store_true", help=f"replace a {LAYOUT.raw_json.name} in --output-dir that holds other (e.g. imported) data")
    args = p.parse_args()
    check_writable(args.output_dir, "--output-dir", folder=True)
    existing = Path(args.output_dir) / LAYOUT.raw_json.name
    if existing.exists() and not args.force and not is_synthetic(existing):
        raise GemmaOcrError(f"{existing} holds data this program did not write (imported or edited?): pass --force "
                            f"to replace it, or --output-dir another folder")
    # the images it renders (images/000000.png, ...) never replace files it did not write (an earlier rendering's
    # are listed in the folder's manifest, or, from before there was one, beside a synthetic ocr.json)
    folder = OutputFolder(args.output_dir, "--output-dir", "gemma-ocr synth", overwrite_flag=None)
    images = [f"images/{i:06d}.png" for i in range(max(args.n_samples, 0))]
    if not (existing.is_file() and is_synthetic(existing) and not (folder.real / MANIFEST).exists()):
        folder.check_files(images)
    config = SyntheticConfig(n_samples=args.n_samples, seed=args.seed, scripts=tuple(args.scripts),
                             blur=args.blur, noise=args.noise, rotation=args.rotation)
    records = generate_dataset(args.output_dir, config)
    folder.record([*images, LAYOUT.raw_json.name])
    print(f"Wrote {len(records)} images and {existing}")
