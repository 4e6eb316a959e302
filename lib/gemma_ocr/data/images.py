"""Opening OCR images: one decoding rule for training, evaluation and the CNN baseline.

:func:`upright_rgb` is the rule: the EXIF orientation applied (phone photos are stored sideways with a tag
saying so), then :func:`to_rgb`. Transparency is composited onto white, as vLLM and recent transformers
image processors do, so a model is trained on what it is served. 16-bit and 32-bit greyscale images
(scanners and TIFF archives write them) are stretched to 8 bits. A plain ``convert("RGB")`` gets these
wrong: transparent backgrounds turn black, 16-bit scans turn almost entirely white, and tagged photos
stay sideways.
The evaluator sends any image that the rule would change as the PNG the rule makes (:func:`server_ready`),
so a server's own decoding never matters.

The image files read everywhere (a folder's images in the importer and in transcription, the evaluator, training)
are those ending in :data:`IMAGE_SUFFIXES`. An animated GIF (or a multi-page TIFF) is read by its first frame,
everywhere: the evaluator sends that frame as PNG rather than the whole file.

Every reader opens an image through :func:`opened_image` (:func:`open_image` for the decoded RGB picture): under a
pixel limit (:class:`ImageTooLarge`, a guard against decompression bombs), fully decoded, and a missing, unreadable,
undecodable or too large file is one line naming it.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from gemma_ocr.errors import GemmaOcrError

if TYPE_CHECKING:
    from gemma_ocr.data.records import OcrRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SERVER_READY_MODES = frozenset({"RGB", "L"})  # without transparency: a server's own RGB conversion gives the same pixels
EXIF_ORIENTATION = 0x0112
#: Pillow's own guard against decompression bombs (about 9459 x 9459 pixels): the most a reader decodes by default
MAX_IMAGE_PIXELS = 89_478_485


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` has an alpha band or a transparent palette/colour entry (transformers' test)."""
    return "A" in image.getbands() or image.info.get("transparency") is not None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB as the model sees it: transparency on white, high bit depths stretched to 0-255."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if hi > lo:
            scaled = np.nan_to_num((values - lo) * (255.0 / (hi - lo)), nan=255.0, posinf=255.0, neginf=0.0)
        else:
            scaled = np.full(values.shape, 255.0)  # a constant (blank) page
        return Image.fromarray(np.clip(scaled.round(), 0, 255).astype(np.uint8), "L").convert("RGB")
    if has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when there is none)."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (ValueError, TypeError, OSError, SyntaxError):  # malformed EXIF: shown as stored
        return 1


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` as the model sees it: turned by its EXIF orientation, then :func:`to_rgb`."""
    if orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def frames(image: Image.Image) -> int:
    """How many frames ``image`` has (an animated GIF, a multi-page TIFF); 1 for a still image."""
    return int(getattr(image, "n_frames", 1) or 1)


def server_ready(image: Image.Image) -> bool:
    """Whether any server decodes ``image``'s file to the pixels :func:`upright_rgb` gives (else send a PNG).

    An animated image never is: a server might read another frame, or refuse it; the first frame goes as PNG.
    """
    return (image.mode in SERVER_READY_MODES and not has_alpha(image) and orientation(image) == 1
            and frames(image) == 1)


class ImageTooLarge(GemmaOcrError):
    """An image with more pixels than the limit (a guard against decompression bombs)."""


def allow_image_pixels(max_pixels: int | None) -> None:
    """Let Pillow open images of up to ``max_pixels`` pixels (None: any), raising its decompression-bomb guard
    (``Image.MAX_IMAGE_PIXELS``, for this process) only when asked for more than it allows; never lowering it.

    :func:`opened_image` enforces ``max_pixels`` itself, naming the file.
    """
    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def read_image_bytes(path: str) -> bytes:
    """The bytes of the image file at ``path``; a missing or unreadable file is one line (GemmaOcrError)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise GemmaOcrError(f"image not found: {path}") from None
    except OSError as e:
        raise GemmaOcrError(f"image cannot be read: {path} ({e.strerror or e})") from None


def _too_large(path: str, pixels: str, max_pixels: int | None) -> ImageTooLarge:
    limit = f", over the limit of {max_pixels:,}" if max_pixels is not None else ""
    return ImageTooLarge(f"image too large: {path} ({pixels}{limit} that guards against decompression bombs)")


@contextmanager
def opened_image(path: str, max_pixels: int | None = None, data: bytes | None = None) -> Iterator[Image.Image]:
    """The image file at ``path`` (its bytes ``data`` when given), opened and fully decoded: its first frame.

    An image of more than ``max_pixels`` pixels (None: no limit but Pillow's) is refused before it is decoded
    (:class:`ImageTooLarge`); a missing, unreadable or undecodable file, or one that fails in the block, is one line
    naming it (:class:`GemmaOcrError`).
    """
    if data is None:
        data = read_image_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise _too_large(path, f"{im.width}x{im.height} = {im.width * im.height:,} pixels", max_pixels)
            im.load()  # decode fully: a truncated file fails here
            yield im
    except UnidentifiedImageError:
        raise GemmaOcrError(f"image cannot be decoded: {path} (not an image, or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:  # Pillow's own guard (twice MAX_IMAGE_PIXELS), hit while opening
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, f"{int(found.group(1)):,} pixels" if found else str(e), max_pixels) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise GemmaOcrError(f"image cannot be decoded: {path} ({e})") from None


def open_image(path: str, max_pixels: int | None = None) -> Image.Image:
    """The image at ``path`` (its first frame) by :func:`upright_rgb`, opened by :func:`opened_image`."""
    with opened_image(path, max_pixels) as im:
        return upright_rgb(im)


def image_problem(path: str) -> str | None:
    """Why the image at ``path`` cannot be used (missing, unreadable, truncated, not an image), or None."""
    if not os.path.isfile(path):
        return f"image not found: {path} (fix the path; relative paths resolve against the JSON file's folder)"
    try:
        with Image.open(path) as im:
            im.load()  # decode it all: verify() passes a truncated JPEG
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        return f"image cannot be read: {path} ({e}; replace or remove the file)"
    return None


def not_an_image(path: str) -> str | None:
    """Why the file at ``path`` is not an image file (missing, not a file, no image header), or None.

    Only the header is read (cheap); :func:`image_problem` decodes the whole image.
    """
    if not os.path.isfile(path):
        return "no such file" if not os.path.exists(path) else "not a file"
    try:
        with Image.open(path):  # identifies the format from the header
            return None
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return None  # an image, a huge one: the readers say so where they decode it
    except (OSError, SyntaxError, ValueError) as e:
        return f"not an image ({e})"


def check_images(records: Sequence[OcrRecord], source: str | os.PathLike[str] = "", shown: int = 3) -> None:
    """Decode every image (in threads); fail with one line naming how many cannot be used and the first ``shown``."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(image_problem, [r.image_path for r in records], chunksize=64)
        problems = [(i, why) for i, why in enumerate(tqdm(found, total=len(records), desc="checking images", unit="img",
                                                           disable=len(records) < 2000, leave=False)) if why]
    if not problems:
        return
    prefix = f"{source}: " if source else ""
    listed = "; ".join(f"record {i}: {why}" for i, why in problems[:shown])
    if len(problems) == 1:
        raise GemmaOcrError(prefix + listed)
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    raise GemmaOcrError(f"{prefix}{len(problems)} of {len(records)} images cannot be used: {listed}{more}")
