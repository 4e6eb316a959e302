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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gemma_ocr.errors import GemmaOcrError

if TYPE_CHECKING:
    from PIL import Image

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
    from PIL import Image

    if image.mode in HIGH_BIT_DEPTH_MODES:
        import numpy as np

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
    from PIL import ImageOps

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


def open_image(path: str) -> Image.Image:
    """Open an image (its first frame) by :func:`upright_rgb`, with a clear error when it is missing or corrupt."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return upright_rgb(im)
    except FileNotFoundError:
        raise GemmaOcrError(f"image not found: {path} (fix the path in the data file)") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as e:
        raise GemmaOcrError(f"image cannot be read: {path} ({e})") from None


def image_problem(path: str) -> str | None:
    """Why the image at ``path`` cannot be used (missing, unreadable, truncated, not an image), or None."""
    from PIL import Image, UnidentifiedImageError

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
    from PIL import Image, UnidentifiedImageError

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
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

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
