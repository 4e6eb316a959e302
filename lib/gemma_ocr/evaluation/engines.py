"""OCR engines as backends of evaluation and transcription: Tesseract, RapidOCR and the Khmer-digits CNN.

They read the same images into the same results documents as a served model (:mod:`gemma_ocr.evaluation.run`,
:mod:`gemma_ocr.evaluation.transcription`, through :func:`gemma_ocr.evaluation.pool.read_with_engine`): same samples
and statuses, same metrics, resume, reports and comparisons, so the engine a user already runs can stand beside the
fine-tuned model in one table.

* **Tesseract** (``backend tesseract``): the ``tesseract`` program (Debian: ``apt-get install tesseract-ocr
  tesseract-ocr-eng tesseract-ocr-khm``), language data ``tesseract_lang`` (``eng``, ``khm``, ``eng+khm``),
  page segmentation mode ``psm`` (7: the image is one text line, the layout of OCR line data; 6: one block;
  3: a whole page). Images go in batches of :data:`TESSERACT_BATCH` through one process each (a process
  per image costs more than the reading), ``workers`` processes at a time, each on one thread
  (``OMP_THREAD_LIMIT=1``).
* **RapidOCR** (``backend rapidocr``, ``pip install -e ".[engines]"``): PP-OCR models on ONNX Runtime,
  shipped in the wheel (no download). ``rapidocr_mode`` ``line`` recognises the whole image as one line (the
  layout of OCR line data; text detection would cut a line into pieces); ``page`` detects text boxes first
  and joins them in reading order (boxes on one row with spaces, rows with newlines). One image at a time,
  in this process, on one thread.
* **Khmer-digits CNN** (``backend khmer-cnn``, ``checkpoint PATH``): a CRNN trained by :mod:`gemma_ocr.khmer_digits`
  (its ``best_model.pt``), reading batches of images in this process. Its results' model name is
  ``khmer-digits:<checkpoint>``; a transcriptions row names it by the checkpoint's file name (``best_model``).

Every image is decoded by the rule training and the served model use (:func:`gemma_ocr.data.images.open_image`:
EXIF orientation, transparency on white, 16-bit scans stretched), so each engine sees the same pixels.
A missing, corrupt or too large image is that sample's error, as it is for a served model.

Each engine's name (the results file's ``model_name``) carries its version and settings, so a results file
resumes only with the same engine and settings.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from gemma_ocr.data.images import ImageTooLarge, open_image
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.settings import FieldError

log = logging.getLogger(__name__)

SERVER, KHMER_CNN, TESSERACT, RAPIDOCR = "server", "khmer-cnn", "tesseract", "rapidocr"
ENGINES = (TESSERACT, RAPIDOCR)
BackendName = Literal["server", "khmer-cnn", "tesseract", "rapidocr"]
TESSERACT_BATCH = 16  # images per tesseract process
_GROUP = "reader (a server or an OCR engine)"  # the heading of these flags in --help
_LANG = re.compile(r"[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*")
TOO_LARGE_HINT = "; --max-image-pixels raises the limit"

#: (index, image path) in; (index, text or None, error or None, seconds) out
Item = tuple[int, str]
Reading = tuple[int, "str | None", "str | None", float]


@dataclass
class EngineConfig:
    """What reads the images: a served model, a Khmer-digits CNN checkpoint, Tesseract or RapidOCR. Fields are the flags."""

    backend: BackendName = field(default=SERVER, metadata={"group": _GROUP,
        "help": "server: a served model (default); khmer-cnn: a Khmer-digits CNN --checkpoint; tesseract: the "
                "tesseract program (--tesseract-lang, --psm); rapidocr: RapidOCR (pip install -e '.[engines]')"})
    checkpoint: str | None = field(default=None, metadata={
        "group": _GROUP, "help": "with --backend khmer-cnn: the .pt checkpoint"})
    tesseract_lang: str = field(default="eng", metadata={"group": _GROUP,
        "help": "with --backend tesseract: language data, e.g. eng, khm, eng+khm (tesseract --list-langs)"})
    psm: int = field(default=7, metadata={"group": _GROUP,
        "help": "with --backend tesseract: page segmentation mode (7: one text line, 6: one block, 3: a page)"})
    rapidocr_mode: Literal["line", "page"] = field(default="line", metadata={"group": _GROUP,
        "help": "with --backend rapidocr: line (the image is one text line) or page (detect text boxes first)"})

    def validate(self) -> None:
        if self.backend == KHMER_CNN and not self.checkpoint:
            raise FieldError("backend", "khmer-cnn needs --checkpoint PATH (e.g. .../checkpoints/best_model.pt)")
        if not 0 <= self.psm <= 13 or isinstance(self.psm, bool):
            raise FieldError("psm", f"must be one of tesseract's page segmentation modes 0-13, got {self.psm!r}")
        if not _LANG.fullmatch(self.tesseract_lang or ""):
            raise FieldError("tesseract_lang", f"must name language data like eng or eng+khm, got {self.tesseract_lang!r}")


class Engine:
    """An OCR engine: :attr:`name` (the results' model name), :meth:`describe`, :meth:`read`."""

    name: str
    #: the model a transcriptions row names (None: :attr:`name`)
    transcription_name: str | None = None

    def describe(self) -> dict[str, Any]:
        """The engine, its version and settings, as the results file's ``engine`` field."""
        raise NotImplementedError

    def read(self, items: Sequence[Item], workers: int = 1, max_pixels: int | None = None) -> Iterator[Reading]:
        """Read each image; yields ``(index, text, None, seconds)`` or ``(index, None, error, seconds)`` as they finish."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the engine holds."""


def open_engine(cfg: EngineConfig) -> Engine:
    """The engine ``cfg.backend`` names, checked to be installed (else one line saying how to install it)."""
    cfg.validate()
    make = OPENERS.get(cfg.backend)
    if make is None:
        raise GemmaOcrError(f"--backend {cfg.backend} is not an OCR engine of this module "
                            f"(use one of {', '.join(OPENERS)})")
    return make(cfg)


def load_image(path: str, max_pixels: int | None) -> Image.Image:
    """The image at ``path`` by the project's decoding rule (:func:`gemma_ocr.data.images.open_image`); a missing,
    corrupt or too large one raises GemmaOcrError (a too large one naming the flag that raises the limit)."""
    try:
        return open_image(path, max_pixels)
    except ImageTooLarge as e:
        raise ImageTooLarge(f"{e}{TOO_LARGE_HINT}") from None


def tidy(text: str) -> str:
    """An engine's text: lines stripped of trailing blanks, empty lines dropped, joined by newlines."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())


# ------------------------------------------------------------------------------------------------ Tesseract

def _run(args: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}  # one thread per process: workers run side by side
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)


class TesseractEngine(Engine):
    """The ``tesseract`` program, reading batches of images per process."""

    def __init__(self, lang: str = "eng", psm: int = 7, binary: str = "tesseract", timeout_per_image: float = 60.0):
        path = shutil.which(binary)
        if path is None:
            raise GemmaOcrError(f"{binary} is not installed: apt-get install tesseract-ocr tesseract-ocr-eng "
                                f"(tesseract-ocr-khm for Khmer), or use another --backend")
        self.binary, self.lang, self.psm, self.timeout_per_image = path, lang, psm, timeout_per_image
        first = (_run([path, "--version"]).stdout or "").splitlines()
        self.version = first[0].split()[-1] if first and first[0].strip() else "unknown"
        listed = _run([path, "--list-langs"])
        have = {l.strip() for l in (listed.stdout or "").splitlines()[1:] if l.strip()}
        missing = [l for l in lang.split("+") if l not in have]
        if missing:
            packages = " ".join(f"tesseract-ocr-{l.lower().replace('_', '-')}" for l in missing)
            raise GemmaOcrError(f"--tesseract-lang {lang}: tesseract has no language data {', '.join(missing)} "
                                f"(installed: {', '.join(sorted(have)) or 'none'}); apt-get install {packages}")
        self.name = f"tesseract-{self.version} {lang} psm{psm}"

    def describe(self) -> dict[str, Any]:
        return {"engine": TESSERACT, "version": self.version, "lang": self.lang, "psm": self.psm,
                "batch": TESSERACT_BATCH, "threads_per_process": 1}

    def _command(self, image_or_list: str) -> list[str]:
        return [self.binary, image_or_list, "stdout", "--psm", str(self.psm), "-l", self.lang]

    def _batch(self, items: Sequence[Item], max_pixels: int | None) -> list[Reading]:
        """One tesseract process over the readable images of ``items`` (each decoded and saved as PNG first)."""
        t0 = time.perf_counter()
        out: list[Reading] = []
        readable: list[int] = []
        with tempfile.TemporaryDirectory(prefix="gemma-ocr-tesseract-") as tmp:
            paths = []
            for index, path in items:
                try:
                    image = load_image(path, max_pixels)
                except GemmaOcrError as e:
                    out.append((index, None, str(e), 0.0))
                    continue
                png = os.path.join(tmp, f"{len(paths):05d}.png")
                image.save(png)
                paths.append(png)
                readable.append(index)
            if paths:
                listing = os.path.join(tmp, "images.txt")
                Path(listing).write_text("\n".join(paths) + "\n", encoding="utf-8")
                texts = self._texts(listing, len(paths))
                if texts is None:  # the batch failed: each image on its own, so one bad one costs only itself
                    texts = [self._one(p) for p in paths]
                seconds = (time.perf_counter() - t0) / len(paths)
                for index, text in zip(readable, texts):
                    out.append((index, text, None, seconds) if not isinstance(text, Exception)
                               else (index, None, str(text), seconds))
        return out

    def _texts(self, listing: str, n: int) -> list[str] | None:
        """The text of each of the ``n`` images listed in ``listing`` (pages are separated by form feeds)."""
        try:
            done = _run(self._command(listing), timeout=self.timeout_per_image * n)
        except subprocess.TimeoutExpired:
            return None
        pages = done.stdout.split("\f")
        if pages and not pages[-1].strip():
            pages = pages[:-1] if len(pages) > n else pages
        if done.returncode != 0 or len(pages) != n:
            log.debug("tesseract batch of %d gave %d pages (exit %d): %s", n, len(pages), done.returncode,
                      done.stderr[-300:])
            return None
        return [tidy(p) for p in pages]

    def _one(self, png: str) -> str | GemmaOcrError:
        try:
            done = _run(self._command(png), timeout=self.timeout_per_image)
        except subprocess.TimeoutExpired:
            return GemmaOcrError(f"tesseract took more than {self.timeout_per_image:g}s on the image")
        if done.returncode != 0:
            return GemmaOcrError(f"tesseract failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return tidy(done.stdout.replace("\f", ""))

    def read(self, items: Sequence[Item], workers: int = 1, max_pixels: int | None = None) -> Iterator[Reading]:
        batches = [items[i:i + TESSERACT_BATCH] for i in range(0, len(items), TESSERACT_BATCH)]
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tesseract") as pool:
            futures = [pool.submit(self._batch, b, max_pixels) for b in batches]
            try:
                for fut in as_completed(futures):
                    yield from fut.result()
            finally:
                for fut in futures:
                    fut.cancel()


# ------------------------------------------------------------------------------------------------ RapidOCR

class RapidOcrEngine(Engine):
    """RapidOCR (PP-OCR on ONNX Runtime, models from its wheel), in this process on one thread."""

    def __init__(self, mode: str = "line"):
        try:
            from rapidocr import RapidOCR  # an optional extra: pip install -e ".[engines]"
        except ImportError:
            raise GemmaOcrError("RapidOCR is not installed: pip install -e '.[engines]' (rapidocr and onnxruntime), "
                                "or use another --backend") from None
        line = mode == "line"
        params = {"Global.log_level": "error", "Global.use_det": not line, "Global.use_cls": not line,
                  "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                  "EngineConfig.onnxruntime.inter_op_num_threads": 1}
        try:
            self.ocr = RapidOCR(params=params)
        except Exception as e:  # noqa: BLE001 - a broken install shows up here in many forms
            raise GemmaOcrError(f"RapidOCR could not start ({type(e).__name__}: {e}); reinstall it: "
                                f"pip install -e '.[engines]'") from None
        self.mode = mode
        self.version = version("rapidocr")
        rec = self.ocr.cfg.Rec
        self.models = f"{getattr(rec.ocr_version, 'value', rec.ocr_version)} {getattr(rec.model_type, 'value', rec.model_type)}"
        self.name = f"rapidocr-{self.version} {self.models.replace(' ', '-')} {mode}"

    def describe(self) -> dict[str, Any]:
        return {"engine": RAPIDOCR, "version": self.version, "models": self.models, "mode": self.mode, "threads": 1}

    def _text(self, image: Any) -> str:
        result = self.ocr(image)
        texts = list(result.txts or ())
        if self.mode == "line" or not texts:
            return tidy(" ".join(texts))
        return tidy(reading_order(result.boxes, texts))

    def read(self, items: Sequence[Item], workers: int = 1, max_pixels: int | None = None) -> Iterator[Reading]:
        for index, path in items:
            t0 = time.perf_counter()
            try:
                image = load_image(path, max_pixels)
            except GemmaOcrError as e:
                yield index, None, str(e), 0.0
                continue
            try:
                text = self._text(image)
            except Exception as e:  # noqa: BLE001 - an engine failure is that sample's error, not the run's
                yield index, None, f"RapidOCR failed: {type(e).__name__}: {e}", time.perf_counter() - t0
                continue
            yield index, text, None, time.perf_counter() - t0


def reading_order(boxes: Any, texts: Sequence[str]) -> str:
    """Detected text boxes joined as a reader goes: rows top to bottom (a box joins a row when its centre lies
    within half a box height of the row's), each row left to right with spaces, rows by newlines."""
    quads = np.asarray(boxes, dtype=float).reshape(len(texts), -1, 2)
    centre_y, left = quads[:, :, 1].mean(axis=1), quads[:, :, 0].min(axis=1)
    height = quads[:, :, 1].max(axis=1) - quads[:, :, 1].min(axis=1)
    rows: list[list[int]] = []
    for i in np.argsort(centre_y, kind="stable"):
        if rows and abs(centre_y[i] - np.mean([centre_y[j] for j in rows[-1]])) <= max(height[i], 1.0) / 2:
            rows[-1].append(int(i))
        else:
            rows.append([int(i)])
    return "\n".join(" ".join(texts[j] for j in sorted(row, key=lambda j: left[j])) for row in rows)


# ------------------------------------------------------------------------------------------------ Khmer-digits CNN

class KhmerCnnEngine(Engine):
    """A Khmer-digits CNN checkpoint (:mod:`gemma_ocr.khmer_digits`), reading batches of images in this process."""

    def __init__(self, checkpoint: str | os.PathLike[str], batch_size: int = 128, device: str = "cpu"):
        if not Path(checkpoint).is_file():
            raise GemmaOcrError(f"--checkpoint {checkpoint}: file not found (train one with "
                                f"core/khmer_digits/phase3_hyperparameter_tuning.py)")
        # torch: loaded only when this backend is asked for (the start-up time of evaluate.py and transcribe.py)
        from gemma_ocr.khmer_digits.backend import load_model, predict_paths

        self.predict_paths = predict_paths
        self.model = load_model(checkpoint, device)
        self.checkpoint, self.batch_size, self.device = str(checkpoint), batch_size, device
        self.name = f"khmer-digits:{checkpoint}"
        self.transcription_name = Path(checkpoint).stem

    def describe(self) -> dict[str, Any]:
        return {"engine": KHMER_CNN, "checkpoint": self.checkpoint}

    def read(self, items: Sequence[Item], workers: int = 1, max_pixels: int | None = None) -> Iterator[Reading]:
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            t0 = time.perf_counter()
            texts, errors = self.predict_paths(self.model, [path for _, path in batch], len(batch), self.device,
                                               load=lambda path: load_image(path, max_pixels))
            seconds = (time.perf_counter() - t0) / len(batch)
            for j, (index, _) in enumerate(batch):
                yield (index, None, errors[j], seconds) if j in errors else (index, texts[j] or "", None, seconds)


#: how each local engine opens from the settings (``backend`` -> engine)
OPENERS: dict[str, Callable[[EngineConfig], Engine]] = {
    KHMER_CNN: lambda cfg: KhmerCnnEngine(cfg.checkpoint or ""),
    TESSERACT: lambda cfg: TesseractEngine(cfg.tesseract_lang, cfg.psm),
    RAPIDOCR: lambda cfg: RapidOcrEngine(cfg.rapidocr_mode),
}
