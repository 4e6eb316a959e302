"""Shared plumbing of the thin programs in core/: logging set-up and clean error exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from gemma_ocr.errors import GemmaOcrError


def setup_logging(verbose: bool = False) -> None:
    """Plain `LEVEL message` logging on stderr for command-line use."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )


def run(main: Callable[[], int | None]) -> None:
    """Run a program's ``main``; a :class:`GemmaOcrError` ends in one line on stderr and exit code 2."""
    setup_logging()
    try:
        code = main()
    except GemmaOcrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def none_or_int(value: str) -> int | None:
    """argparse type for flags such as ``--top-k None``."""
    if value.strip().lower() in {"none", "all", ""}:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"expected an integer or None, got {value!r}") from None
    return n


def add_request_arguments(p: argparse.ArgumentParser, output_default: str, output_help: str) -> None:
    """The flags of a program that sends images to OpenAI-compatible servers (evaluate.py, transcribe.py)."""
    from gemma_ocr.evaluation import DEFAULT_INSTRUCTION, DEFAULT_URL

    p.add_argument("--vllm-url", nargs="+", default=[DEFAULT_URL], metavar="URL",
                   help="server URL(s): http://host:port, .../v1 or .../v1/chat/completions; several share the load")
    p.add_argument("--output-file", default=output_default, help=output_help)
    p.add_argument("--workers", type=int, default=4, help="parallel requests")
    p.add_argument("--model-name", default=None, help="served model name (default: the one model the server lists)")
    p.add_argument("--save-interval", type=int, default=50, help="save the output file every N finished images")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="text sent with each image")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a request on connection errors, timeouts, 408/429/5xx")
    p.add_argument("--max-tokens", type=int, default=512, help="longest answer in tokens")
    p.add_argument("--wait-server", type=float, default=10.0, help="seconds to wait for the server's /health")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`gemma_ocr.evaluation.RequestConfig` fields from the flags of :func:`add_request_arguments`."""
    return dict(urls=args.vllm_url, output_file=args.output_file, workers=args.workers, model_name=args.model_name,
                save_interval=args.save_interval, instruction=args.instruction, timeout=args.timeout,
                max_retries=args.max_retries, max_tokens=args.max_tokens, wait_server=args.wait_server,
                resume=not args.no_resume, show_progress=not args.no_progress)
