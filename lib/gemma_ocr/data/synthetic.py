"""Synthetic OCR text lines rendered with real fonts, deterministic by seed.

Each line is drawn black-on-light onto its own PNG; optional blur, noise and rotation make
the images less clean. Scripts: Latin words and numbers, digit strings, Khmer digits, and Chinese
when a CJK font is installed. Latin and digit lines are drawn in Noto Sans unless ``font`` names
another installed family.

Two distributions have names: :data:`READER_PRETRAINING` (what the shipped tiny reader learned to
read) and :data:`SHIFTED_DIGITS` (the main job's data: the same kind of lines in a font the reader
never saw).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from gemma_ocr.data.fonts import cjk_font, font_family, khmer_font, latin_font, missing_glyphs
from gemma_ocr.data.records import OcrRecord, write_records
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, read_json, reporting_write_errors
from gemma_ocr.layout import LAYOUT

log = logging.getLogger(__name__)

WORDS = (
    "invoice total amount date account number receipt order customer address street city "
    "payment balance due tax subtotal item quantity price unit discount cash card change "
    "phone email reference station platform ticket page chapter section table figure note "
    "north south east west river mountain garden market bank school hospital office hotel "
    "january february march april may june july august september october november december "
    "model vision language gemma text line image sample batch score metric result report"
).split()
KHMER_DIGITS = "០១២៣៤៥៦៧៨៩"
CJK_PHRASES = (
    "請給我 OCR 結果", "發票號碼", "總金額", "日期", "客戶名稱", "地址", "電話", "收據", "訂單編號",
    "台北市", "數量", "單價", "小計", "稅額", "備註", "第一章", "資料表", "模型", "文字辨識",
)


@dataclass
class SyntheticConfig:
    """What to render: how many lines, which scripts, how much degradation."""

    n_samples: int = 300
    seed: int = 42
    font_size: tuple[int, int] = (22, 34)
    khmer_fraction: float = 0.2
    cjk_fraction: float = 0.15
    blur: float = 0.0  # max Gaussian blur radius
    noise: float = 0.0  # max std of additive Gaussian noise (0-255 scale)
    rotation: float = 0.0  # max absolute rotation in degrees
    scripts: tuple[str, ...] = field(default=("latin", "khmer", "cjk"))
    digits_fraction: float = 0.0  # weight of digit lines among the enabled scripts (alone: every line)
    digits_length: tuple[int, int] = (4, 10)  # digits per digit line, both ends included
    font: str | None = None  # fontpkg family for Latin and digit lines; None: Noto Sans


SCRIPTS = ("latin", "digits", "khmer", "cjk")
#: The shipped tiny reader's pretraining distribution: lines of 4-10 digits in Noto Sans.
READER_PRETRAINING = SyntheticConfig(n_samples=10_000, seed=1, scripts=("digits",))
#: The main job's distribution: the same lines in Noto Serif, a font the reader was not pretrained on.
SHIFTED_DIGITS = SyntheticConfig(n_samples=3_000, seed=42, scripts=("digits",), font="Noto Serif")


def _latin_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))).capitalize()
    if kind < 0.7:
        return f"{rng.choice(WORDS).capitalize()}: {rng.randint(1, 99999)}"
    if kind < 0.85:
        return f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"${rng.randint(0, 9999)}.{rng.randint(0, 99):02d}"


def _digit_line(rng: random.Random, config: SyntheticConfig) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(*config.digits_length)))


def _khmer_line(rng: random.Random) -> str:
    return "".join(rng.choice(KHMER_DIGITS) for _ in range(rng.randint(1, 8)))


def _cjk_line(rng: random.Random) -> str:
    line = rng.choice(CJK_PHRASES)
    if rng.random() < 0.5:
        line += f"：{rng.randint(1, 9999)}"
    return line


def iter_lines(config: SyntheticConfig) -> Iterator[tuple[str, str]]:
    """Yield ``(script, text)`` pairs, deterministic for a given config.

    Scripts are drawn with weights ``khmer_fraction``, ``cjk_fraction``, ``digits_fraction`` and the rest
    for Latin, among the enabled scripts (CJK only when a CJK font is installed).
    """
    unknown = [s for s in config.scripts if s not in SCRIPTS]
    if unknown:
        raise GemmaOcrError(f"unknown script {unknown[0]!r}: choose among {', '.join(SCRIPTS)}")
    low, high = config.digits_length
    if not 1 <= low <= high:
        raise GemmaOcrError(f"digits_length {config.digits_length}: needs 1 <= shortest <= longest")
    weights = {"khmer": config.khmer_fraction, "cjk": config.cjk_fraction, "digits": config.digits_fraction,
               "latin": max(0.0, 1.0 - config.khmer_fraction - config.cjk_fraction - config.digits_fraction)}
    enabled = [s for s in SCRIPTS if s in config.scripts and (s != "cjk" or cjk_font() is not None)]
    if not enabled:
        raise GemmaOcrError(f"no script to render: --scripts {' '.join(config.scripts)} (cjk needs an installed CJK font)")
    if sum(weights[s] for s in enabled) <= 0:
        weights = dict.fromkeys(enabled, 1.0)
    makers = {"latin": _latin_line, "khmer": _khmer_line, "cjk": _cjk_line,
              "digits": functools.partial(_digit_line, config=config)}
    rng = random.Random(config.seed)
    for _ in range(config.n_samples):
        script = rng.choices(enabled, weights=[weights[s] for s in enabled])[0]
        yield script, makers[script](rng)


def _font_path(script: str, family: str | None = None) -> Path:
    if family and script in ("latin", "digits"):
        return font_family(family)
    return {"latin": latin_font, "digits": latin_font, "khmer": khmer_font, "cjk": cjk_font}[script]()


def check_glyphs(script: str, text: str, family: str | None = None) -> None:
    """Refuse a line that the script's font cannot draw: it would become empty boxes labelled with real text."""
    path = _font_path(script, family)
    missing = missing_glyphs(path, text)
    if missing:
        raise GemmaOcrError(f"font {path} has no glyph for {missing!r} (line {text!r}): the image would show empty "
                            f"boxes; install a font that covers the {script} lines or leave '{script}' out of --scripts")


def render_line(text: str, font: ImageFont.FreeTypeFont, rng: random.Random, config: SyntheticConfig) -> Image.Image:
    """Render one line with margins, then apply the configured degradations."""
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = rng.randint(4, 16), rng.randint(3, 10)
    width, height = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    bg = rng.randint(225, 255)
    image = Image.new("L", (max(width, 8), max(height, 8)), color=bg)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=rng.randint(0, 60))
    if config.rotation:
        image = image.rotate(rng.uniform(-config.rotation, config.rotation), expand=True, fillcolor=bg, resample=Image.BICUBIC)
    if config.blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, config.blur)))
    if config.noise:
        arr = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(0, config.noise), arr.shape)
        image = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def generate_dataset(out_dir: str | Path, config: SyntheticConfig | None = None, json_name: str = LAYOUT.raw_json.name,
                     progress: Callable[[int, int], None] | None = None) -> list[OcrRecord]:
    """Render ``config.n_samples`` lines to ``out_dir/images/`` and write ``out_dir/<json_name>`` in the raw layout.

    ``progress(done, total)`` after each line, instead of a progress bar of its own."""
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if "cjk" in config.scripts and cjk_font() is None:
        log.info("no CJK font installed: rendering Latin and Khmer lines only")
    rng = random.Random(config.seed + 1)
    records: list[OcrRecord] = []
    fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
    lines = list(iter_lines(config))
    for script, text in lines:  # before anything is written
        check_glyphs(script, text, config.font)
    for i, (script, text) in enumerate(tqdm(lines, desc="rendering", unit="line",
                                            disable=len(lines) < 500 or progress is not None)):
        size = rng.randint(*config.font_size)
        if (script, size) not in fonts:
            fonts[script, size] = ImageFont.truetype(str(_font_path(script, config.font)), size=size)
        font = fonts[script, size]
        image = render_line(text, font, rng, config)
        path = image_dir / f"{i:06d}.png"
        with reporting_write_errors(path, f"{i} of {len(lines)} images were written"):
            image.save(path, optimize=False)
        records.append(OcrRecord(str(path.resolve()), text))
        if progress is not None:
            progress(i + 1, len(lines))
    written = write_records(records, out_dir / json_name, raw=True)
    atomic_write_json(_stamp_path(written), {"config": dataclasses.asdict(config), "sha256": _sha256(written)})
    return records


def _stamp_path(json_path: Path) -> Path:
    return json_path.with_name(json_path.stem + ".synthetic.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_synthetic(json_path: str | Path) -> bool:
    """Whether ``json_path`` is, unchanged, a file :func:`generate_dataset` wrote (its stamp beside it matches)."""
    json_path = Path(json_path)
    stamp = _stamp_path(json_path)
    if not (json_path.is_file() and stamp.is_file()):
        return False
    try:
        return read_json(stamp).get("sha256") == _sha256(json_path)
    except (GemmaOcrError, AttributeError):
        return False
