"""Render Khmer-digit sequence images (1-8 digits, Noto Sans Khmer) with train/val splits and metadata.yaml."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_ocr.flags import ConfigParser
from gemma_ocr.khmer_digits.generator import GeneratorConfig, export_ocr_json, generate_dataset
from gemma_ocr.layout import LAYOUT
from gemma_ocr.settings import Settings, setting

output = functools.partial(setting, group="where it goes")


@dataclass
class GenerateArguments(Settings):
    """Where the images go, and an optional OCR input file of one split."""

    output_dir: Path = output(LAYOUT.khmer_data, "folder for the images and metadata.yaml")
    export_json: Path | None = output(None, "also write a split as an OCR input file [{image_path, ocr_text}] "
                                            "(for evaluation)", metavar="PATH")
    export_split: Literal["train", "val"] = output("val", "the split --export-json writes")


def main() -> None:
    args, config, _ = ConfigParser([GenerateArguments, GeneratorConfig], config_file=False,
                                   description=__doc__).parse_settings()
    meta = generate_dataset(args.output_dir, config)
    print(f"Wrote {config.n_train} train and {config.n_val} val images; metadata: {meta}")
    if args.export_json:
        path = export_ocr_json(meta, args.export_json, split=args.export_split)
        print(f"Wrote the {args.export_split} split as OCR input file {path}")
