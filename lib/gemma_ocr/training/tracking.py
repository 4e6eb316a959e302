"""Experiment tracking: Weights & Biases (offline unless an API key is set) and TensorBoard."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_ocr.errors import GemmaOcrError

if TYPE_CHECKING:
    from gemma_ocr.config import TrainConfig

log = logging.getLogger(__name__)


def setup_tracking(config: TrainConfig) -> list[str]:
    """Prepare the environment of the selected trackers; return the ``report_to`` list for the trainer.

    W&B: project/group from the config; ``WANDB_MODE=offline`` when no ``WANDB_API_KEY`` (and no
    mode) is set, so runs land under ``<output_dir>/wandb`` and can be uploaded later with ``wandb sync``.
    TensorBoard: event files under ``<output_dir>/runs``.
    """
    reporters = config.reporters
    if "wandb" in reporters:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise GemmaOcrError("report_to includes wandb but wandb is not installed: pip install wandb")
        os.environ["WANDB_PROJECT"] = config.wandb_project
        if config.wandb_group:
            os.environ["WANDB_RUN_GROUP"] = config.wandb_group
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            log.info("W&B: no WANDB_API_KEY, logging offline (upload later with `wandb sync`)")
        wandb_dir = Path(config.output_dir).resolve()
        wandb_dir.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = str(wandb_dir)  # runs land beside the adapter: <output_dir>/wandb/
        os.environ.setdefault("WANDB_SILENT", "true")
    if "tensorboard" in reporters:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise GemmaOcrError("report_to includes tensorboard but it is not installed: pip install tensorboard")
    return reporters or ["none"]


def finish_tracking() -> None:
    """Close a W&B run left open by the trainer (the search runs many trainings in one process)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def read_offline_wandb_history(run_file: str | os.PathLike[str]) -> list[dict]:
    """The history rows (``{"train/loss": ..., "eval/loss": ..., "train/global_step": ...}``) of an offline
    ``run-*.wandb`` file, to check what a run logged before it is synced.

    The file is a LevelDB-style log (32 KiB blocks of checksummed records) of W&B protobuf records.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    if not data.startswith(b":W&B"):
        raise GemmaOcrError(f"{run_file}: not a W&B run file")
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
            pending = b""
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
