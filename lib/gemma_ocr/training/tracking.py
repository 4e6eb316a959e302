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
        os.environ.setdefault("WANDB_DIR", str(wandb_dir))
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
