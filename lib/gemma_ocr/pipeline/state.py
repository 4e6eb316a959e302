"""What each kept output of the main job was made from: a fingerprint of the inputs each stage read (the split's
files, the config, the model weights), recorded in ``results/pipeline/state.json`` (:class:`StageRecord`)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

WEIGHT_FILES = ("*.safetensors", "config.json", "adapter_config.json")


def _file_sha256(path: Path) -> str:
    """The file's SHA-256, read once per version of the file (the base model's weights serve several stages)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short digest of ``parts``: a file by its bytes, a model folder by its weights and config, the rest by value."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            files = sorted({f for pattern in WEIGHT_FILES for f in part.glob(pattern) if f.is_file()})
            h.update(json.dumps([(f.name, _file_sha256(f)) for f in files]).encode())
        elif isinstance(part, Path):
            h.update(_file_sha256(part).encode() if part.is_file() else b"missing")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class StageRecord:
    """The fingerprint of the inputs each stage's output was made from (``results/pipeline/state.json``)."""

    def __init__(self, path: Path):
        self.path = path
        data = read_json(path, "pipeline state") if path.is_file() else {}
        self.stages: dict[str, str] = data if isinstance(data, dict) else {}

    def keeps(self, cfg: PipelineConfig, stage: str, output: Path, exists: bool, inputs: str) -> bool:
        """Whether ``stage`` can keep its existing ``output``: there, made from ``inputs``, and no ``--force``."""
        if cfg.force or not exists:
            return False
        if self.stages.get(stage) == inputs:
            log.info("%s: %s exists, kept", stage, output)
            return True
        log.info("%s: %s was made from other inputs (data, configuration, model or seed changed): redoing it", stage, output)
        return False

    def done(self, stage: str, inputs: str) -> None:
        self.stages[stage] = inputs
        atomic_write_json(self.path, self.stages)
