"""Synthetic Khmer-digit sequence images, deterministic by seed.

Each sample is 1-8 digits of ``០១២៣៤៥៦៧៨៩`` drawn with the real Noto Sans Khmer font (a variable
font: weight and width vary too) onto a small grayscale canvas (default 32x128, the models'
input size), at a random size and position, then rotated, blurred and noised.

Output layout of :func:`generate_dataset`::

    generated_data/
      metadata.yaml            # generator settings + train/val sample lists
      images/train/000000.png
      images/val/000000.png

``metadata.yaml``::

    dataset_info: {name: khmer_digits, characters: ..., max_sequence_length: 9, generator: {...}}
    train: {num_samples: N, samples: [{image_path: images/train/000000.png, label: "០១២"}, ...]}
    val:   {num_samples: M, samples: [...]}

Image paths are relative to the metadata file's folder.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from gemma_ocr.data.fonts import khmer_font
from gemma_ocr.data.records import OcrRecord, write_records
from gemma_ocr.errors import ConfigurationError, DataLoaderError, GemmaOcrError
from gemma_ocr.io import atomic_write_text
from gemma_ocr.khmer_digits.vocab import DIGITS, MAX_DIGITS, MAX_SEQUENCE_LENGTH
from gemma_ocr.layout import LAYOUT
from gemma_ocr.settings import Settings, setting

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


rendering = functools.partial(setting, group="what to render")


@dataclass
class GeneratorConfig(Settings):
    """What to render. Degradation maxima are drawn uniformly per image."""

    error: ClassVar[type[GemmaOcrError]] = ConfigurationError

    n_train: int = rendering(10000, "training images")
    n_val: int = rendering(1000, "validation images")
    seed: int = rendering(42, "seed of the labels and the degradations")
    image_height: int = rendering(32, "image height (the models take 32)", aliases=["--height"])
    image_width: int = rendering(128, "image width (the models take 128)", aliases=["--width"])
    min_digits: int = rendering(1, "fewest digits of a label")
    max_digits: int = rendering(MAX_DIGITS, "most digits of a label")
    min_font_size: int = rendering(16, "smallest font size")
    max_font_size: int = rendering(30, "largest font size")
    rotation: float = rendering(3.0, "max absolute rotation in degrees")
    blur: float = rendering(0.8, "max Gaussian blur radius")
    noise: float = rendering(12.0, "max std of additive Gaussian noise (0-255)")
    vary_weight: bool = rendering(True, "random font weight and width (the variable font's axes)")

    def validate(self) -> None:
        """Types, then ranges; raise :class:`FieldError` on the first bad field."""
        super().validate()
        self.at_least(1, "min_digits", most=self.max_digits)
        self.at_least(self.min_digits, "max_digits", most=MAX_DIGITS)
        self.at_least(0, "n_train", "n_val")
        self.at_least(16, "image_height")
        self.at_least(32, "image_width")
        self.at_least(6, "min_font_size", most=self.max_font_size)
        self.at_least(self.min_font_size, "max_font_size")


def random_label(rng: random.Random, config: GeneratorConfig) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(rng.randint(config.min_digits, config.max_digits)))


class Renderer:
    """Draws labels onto canvases; fonts are cached per size."""

    def __init__(self, config: GeneratorConfig):
        self.config = config
        self._path = str(khmer_font())
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._axes: list[dict[str, Any]] | None = None

    def _font(self, size: int, rng: random.Random) -> ImageFont.FreeTypeFont:
        font = self._fonts.get(size)
        if font is None:
            font = self._fonts[size] = ImageFont.truetype(self._path, size=size)
        if self.config.vary_weight:
            try:
                axes = self._axes if self._axes is not None else font.get_variation_axes()
                self._axes = axes
                values = []
                for axis in axes:
                    lo, hi = axis["minimum"], axis["maximum"]
                    if axis["name"] in (b"Weight", "Weight"):
                        lo, hi = max(lo, 250), min(hi, 800)
                    elif axis["name"] in (b"Width", "Width"):
                        lo = max(lo, 75)
                    values.append(rng.uniform(lo, hi))
                font.set_variation_by_axes(values)
            except (OSError, AttributeError):  # a static font build: keep its one style
                self._axes = []
        return font

    def render(self, text: str, rng: random.Random) -> Image.Image:
        """One grayscale ``image_height x image_width`` image of ``text``."""
        c = self.config
        w, h = c.image_width, c.image_height
        size = rng.randint(c.min_font_size, c.max_font_size)
        while True:
            font = self._font(size, rng)
            left, top, right, bottom = font.getbbox(text)
            tw, th = right - left, bottom - top
            if (tw <= w - 4 and th <= h - 2) or size <= 6:
                break
            size -= 1
        bg = rng.randint(190, 255)
        fg = rng.randint(0, min(90, bg - 100))
        image = Image.new("L", (w, h), color=bg)
        x = rng.randint(0, max(0, w - tw - 2)) + 1 - left
        y = rng.randint(0, max(0, h - th - 1)) - top
        ImageDraw.Draw(image).text((x, y), text, font=font, fill=fg)
        if c.rotation:
            image = image.rotate(rng.uniform(-c.rotation, c.rotation), resample=Image.BILINEAR, fillcolor=bg)
        if c.blur and rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, c.blur)))
        if c.noise:
            arr = np.asarray(image, dtype=np.float32)
            arr = arr + np.random.default_rng(rng.getrandbits(32)).normal(0.0, rng.uniform(0, c.noise), arr.shape)
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return image


def generate_samples(n: int, config: GeneratorConfig, seed: int) -> list[tuple[str, Image.Image]]:
    """``n`` (label, image) pairs in memory, deterministic for ``(config, seed)``."""
    rng = random.Random(seed)
    renderer = Renderer(config)
    out = []
    for _ in range(n):
        label = random_label(rng, config)
        out.append((label, renderer.render(label, rng)))
    return out


def generate_dataset(output_dir: str | Path = LAYOUT.khmer_data, config: GeneratorConfig | None = None) -> Path:
    """Render the train and val splits to ``output_dir`` and write ``metadata.yaml``; returns its path."""
    config = config or GeneratorConfig()
    config.validate()
    output_dir = Path(output_dir)
    meta: dict[str, Any] = {
        "dataset_info": {
            "name": "khmer_digits",
            "characters": DIGITS,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "image_height": config.image_height,
            "image_width": config.image_width,
            "generator": asdict(config),
        }
    }
    for split_index, (split, n) in enumerate((("train", config.n_train), ("val", config.n_val))):
        folder = output_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(config.seed * 1000 + split_index)
        renderer = Renderer(config)
        samples = []
        for i in tqdm(range(n), desc=f"rendering {split}", unit="img", disable=n < 2000):
            label = random_label(rng, config)
            image = renderer.render(label, rng)
            rel = f"images/{split}/{i:06d}.png"
            image.save(output_dir / rel)
            samples.append({"image_path": rel, "label": label})
        meta[split] = {"num_samples": n, "samples": samples}
    path = output_dir / "metadata.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    atomic_write_text(path, yaml.dump(meta, Dumper=dumper, allow_unicode=True, sort_keys=False, width=200))
    log.info("wrote %d train and %d val images, metadata at %s", config.n_train, config.n_val, path)
    return path


def load_metadata(metadata_path: str | Path) -> dict[str, Any]:
    """Read ``metadata.yaml`` (fast C loader when present) with one-line errors."""
    path = Path(metadata_path)
    if not path.is_file():
        raise DataLoaderError(f"dataset metadata not found: {path} (generate it: python core/khmer_digits/generate_data.py --output-dir {path.parent})")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with path.open(encoding="utf-8") as f:
            meta = yaml.load(f, Loader=loader)
    except yaml.YAMLError:
        raise DataLoaderError(f"{path}: malformed YAML (regenerate it with core/khmer_digits/generate_data.py)") from None
    if not isinstance(meta, dict):
        raise DataLoaderError(f"{path}: expected a mapping with train/val splits")
    return meta


def split_records(metadata_path: str | Path, split: str) -> list[OcrRecord]:
    """The samples of one split as OCR records with absolute image paths."""
    path = Path(metadata_path)
    meta = load_metadata(path)
    entry = meta.get(split)
    if not isinstance(entry, dict) or not isinstance(entry.get("samples"), list):
        known = [k for k, v in meta.items() if isinstance(v, dict) and "samples" in v]
        raise DataLoaderError(f"{path}: no split {split!r} (splits there: {', '.join(known) or 'none'})")
    base = path.parent.resolve()
    records = []
    for i, s in enumerate(entry["samples"]):
        if not isinstance(s, dict) or "image_path" not in s or "label" not in s:
            raise DataLoaderError(f"{path}: {split} sample {i} needs image_path and label")
        p = Path(s["image_path"])
        records.append(OcrRecord(str(p if p.is_absolute() else base / p), str(s["label"])))
    return records


def export_ocr_json(metadata_path: str | Path, output_json: str | Path, split: str = "val") -> Path:
    """Write one split as an OCR input file (``[{image_path, ocr_text}]``, paths relative to the file)."""
    records = split_records(metadata_path, split)
    return write_records(records, output_json)
