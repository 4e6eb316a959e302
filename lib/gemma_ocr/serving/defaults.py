"""Defaults of the servers (no imports of the rest of :mod:`gemma_ocr.serving`: every module of it may take these)."""

from __future__ import annotations

ENGINES = ("transformers", "vllm")
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MAX_BATCH_SIZE = 8  # embedded server: most requests generated together
DEFAULT_MAX_WAIT = 0.1  # embedded server: seconds a forming batch waits for requests still being read
MAX_CACHED_GENERATION_CONFIGS = 64  # embedded server: generation configs kept, one per set of request options
