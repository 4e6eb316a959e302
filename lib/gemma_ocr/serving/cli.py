"""The embedded server's command line (``python -m gemma_ocr.serving``): flags checked up front, each problem
one line naming the flag, before the model is loaded."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.serving.defaults import DEFAULT_HOST, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT, DEFAULT_PORT
from gemma_ocr.serving.flags import add_media_flags, embedded_flag_problem
from gemma_ocr.serving.media import MediaPolicy
from gemma_ocr.serving.process import check_host_and_port, check_model_dir, default_served_name

log = logging.getLogger(__name__)


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
    import uvicorn  # an optional extra (gemma-ocr[serve]); --help and a flag's error answer without it

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
        import torch  # the start-up time of --help and of a flag's error: torch loads only to serve

        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # torch and transformers come with the app: --help and a flag's error answer without them
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
