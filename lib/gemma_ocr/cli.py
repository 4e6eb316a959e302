"""Shared plumbing of the thin programs in core/: logging set-up and clean error exits."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

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
