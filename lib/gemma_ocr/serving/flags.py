"""The embedded server's own flags, checked up front: each problem one line naming the flag (the
``python -m gemma_ocr.serving`` command line, ``gemma-ocr serve`` and the app's model loading take these)."""

from __future__ import annotations

import argparse
import math
import os

DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32"}
HALF = ("float16", "fp16", "half")


def dtype_problem(dtype: str | None) -> str | None:
    """Why the embedded server cannot compute in ``dtype`` (one line naming ``--dtype``), or None."""
    if dtype in (None, "auto") or dtype in DTYPES:
        return None
    if dtype in HALF:
        return f"--dtype {dtype}: Gemma 3 overflows to NaN or empty answers in float16; use bfloat16 (CUDA) or float32"
    return f"--dtype {dtype}: choose bfloat16 or float32 (default: bfloat16 on CUDA, float32 on the CPU)"


def media_path_problem(path: str | os.PathLike[str] | None) -> str | None:
    """Why ``--allowed-local-media-path`` cannot be ``path`` (None: not given), or None."""
    if path is not None and not os.path.isdir(path):
        return f"--allowed-local-media-path {path}: no such folder (give the folder whose images requests may name)"
    return None


def embedded_flag_problem(max_batch_size: int | None = None, max_wait: float | None = None,
                          torch_threads: int | None = None, dtype: str | None = None,
                          local_media_path: str | None = None) -> str | None:
    """The first problem of the embedded server's own flags (None: not given), as one line; or None."""
    if max_batch_size is not None and max_batch_size < 1:
        return f"--max-batch-size must be >= 1 (1: one request at a time), got {max_batch_size}"
    if max_wait is not None and not (math.isfinite(max_wait) and max_wait >= 0):
        return f"--max-wait must be a number of seconds >= 0, got {max_wait}"
    if torch_threads is not None and torch_threads < 0:
        return f"--torch-threads must be >= 0 (0: torch's default), got {torch_threads}"
    return dtype_problem(dtype) or media_path_problem(local_media_path)


def add_media_flags(p: argparse.ArgumentParser) -> None:
    """``--allowed-local-media-path`` and ``--allowed-media-domains``, as vLLM names them."""
    p.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                   help="let requests name image files under DIR (paths or file:// URLs); default: data URLs only")
    p.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                   help="let requests name http(s) image URLs of these hosts; default: data URLs only")
