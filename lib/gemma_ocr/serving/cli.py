"""The embedded server's command line (``python -m gemma_ocr.serving``): flags checked up front, each problem
one line naming the flag, before the model is loaded."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence

from gemma_ocr.serving.defaults import DEFAULT_HOST, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT, DEFAULT_PORT

log = logging.getLogger(__name__)

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gemma_ocr.serving", allow_abbrev=False,
                                description="the embedded OpenAI-compatible server (transformers, on a CPU or GPU)")
    p.add_argument("model_dir")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="bfloat16 or float32 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                   help="most requests generated together (1: one at a time)")
    p.add_argument("--max-wait", type=float, default=DEFAULT_MAX_WAIT,
                   help="seconds a forming batch waits for requests still being read")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_media_flags(p)
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Check the flags, load the model, serve until stopped."""
    import uvicorn

    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.serving.media import MediaPolicy
    from gemma_ocr.serving.process import check_host_and_port, check_model_dir, default_served_name

    p = parser()
    args = p.parse_args(argv)
    problem = embedded_flag_problem(args.max_batch_size, args.max_wait, args.torch_threads, args.dtype,
                                    args.allowed_local_media_path)
    try:
        if problem:
            raise GemmaOcrError(problem)
        check_host_and_port(args.host, args.port)
        check_model_dir(args.model_dir)
    except GemmaOcrError as e:
        p.error(str(e))
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from gemma_ocr.serving.app import build_app

    name = args.served_model_name or default_served_name(args.model_dir)
    media = MediaPolicy.from_flags(args.allowed_local_media_path, args.allowed_media_domains)
    try:
        app = build_app(args.model_dir, name, device=args.device, dtype=args.dtype,
                        max_batch_size=args.max_batch_size, max_wait=args.max_wait, media=media)
    except GemmaOcrError as e:
        p.error(str(e))
    log.info("serving %s as %r on http://%s:%d", args.model_dir, name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
