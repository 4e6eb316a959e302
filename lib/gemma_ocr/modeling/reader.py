"""The shipped tiny readers: a tiny Gemma 3 (and a tiny Gemma 4) pretrained from random weights until it reads
lines of digits.

One deterministic recipe (:class:`ReaderRecipe`) builds either with the project's own code: a random
:func:`~gemma_ocr.modeling.tiny.build_tiny_gemma3` of :data:`READER_ARCHITECTURE` (or
:func:`~gemma_ocr.modeling.tiny_gemma4.build_tiny_gemma4` of :data:`GEMMA4_READER_ARCHITECTURE`), synthetic lines of
:data:`~gemma_ocr.data.synthetic.READER_PRETRAINING`, every weight trained through
:func:`gemma_ocr.training.tune` (``train_mode: full``), then greedy reading of held-out lines rendered
with another seed through the model's own processor and chat template. Below its CER target the build
fails and writes nothing. The folder it writes is a complete hub-layout checkpoint plus ``reader.json``
(the command, architecture, data, training config, CPU seconds, held-out CER) and a model card.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from gemma_ocr.data.images import open_image
from gemma_ocr.data.records import write_records
from gemma_ocr.data.synthetic import READER_PRETRAINING, generate_dataset
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, atomic_write_text
from gemma_ocr.layout import LAYOUT
from gemma_ocr.modeling.loading import load_processor
from gemma_ocr.modeling.tiny import build_tiny_gemma3, to_hub_layout
from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4
from gemma_ocr.scoring.metrics import aggregate, score_pairs
from gemma_ocr.settings import FieldError, Settings, setting
from gemma_ocr.training.cer_eval import generate_answers
from gemma_ocr.training.config import DEFAULT_INSTRUCTION

log = logging.getLogger(__name__)

CARD_FILE = "reader.json"
#: The reader's shape: 64 px images in 8 px patches, one image token per patch (no pooling), two layers per tower.
READER_ARCHITECTURE: dict[str, int] = {
    "image_size": 64, "patch_size": 8, "mm_tokens_per_image": 64,
    "hidden_size": 64, "num_layers": 2, "vision_hidden_size": 64, "vision_layers": 2,
}
#: The Gemma 4 reader's shape: lines kept at their aspect ratio in 8 px patches, pooled 2x2, 70 image tokens at
#: most (the smallest budget); vision width 32, text width 64, two layers per tower (about 0.14 CPU-s a step); a
#: start made for training from scratch (random vision positions, unit attention logits: see random_gemma4).
GEMMA4_READER_ARCHITECTURE: dict[str, Any] = {
    "patch_size": 8, "image_token_budget": 70,
    "hidden_size": 64, "num_layers": 2, "vision_hidden_size": 32, "vision_layers": 2, "from_scratch": True,
}
#: Per family: the builder of the random start, its architecture and the reader's default folder.
READERS: dict[str, tuple[Any, dict[str, Any], Path]] = {
    "gemma3": (build_tiny_gemma3, READER_ARCHITECTURE, LAYOUT.reader),
    "gemma4": (build_tiny_gemma4, GEMMA4_READER_ARCHITECTURE, LAYOUT.models / "tiny-gemma4-reader"),
}
#: Files of a trained output folder that make up the checkpoint (checkpoints, metrics and logs stay behind).
CHECKPOINT_FILES = ("model.safetensors", "config.json", "generation_config.json", "processor_config.json",
                    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


recipe_field = functools.partial(setting, group="pretraining recipe (--pretrain)")


@dataclass
class ReaderRecipe(Settings):
    """Everything that decides the reader: data, steps, seed, threads, and the CER it must reach."""

    lines: int = recipe_field(10_000, "pretraining lines to render")
    data_seed: int = recipe_field(1, "seed of the pretraining lines")
    heldout_lines: int = recipe_field(200, "held-out lines the target is checked on")
    heldout_seed: int = recipe_field(2, "seed of the held-out lines")
    seed: int = recipe_field(0, "weight initialisation and training order (also of a random-weight model)")
    max_steps: int = recipe_field(6_000, "optimizer steps at the full learning rate")
    batch_size: int = recipe_field(16, "lines per step")
    learning_rate: float = recipe_field(3e-3, "learning rate of the first run")
    warmup_steps: float = recipe_field(0.02, "warm-up, as a fraction of max_steps")
    lr_scheduler_type: str = recipe_field("constant_with_warmup", "scheduler of the first run")
    anneal_steps: int = recipe_field(1_500, "then every weight again from that result, the learning rate falling "
                                      "linearly to 0 (0: no annealing)")
    anneal_learning_rate: float = recipe_field(1e-3, "learning rate the annealing starts from")
    threads: int = recipe_field(1, "torch threads (1 is fastest on a shared CPU)")
    target_cer: float = recipe_field(0.10, "fail, writing nothing, when the held-out CER is above this")
    max_new_tokens: int = recipe_field(16, "longest answer when the held-out lines are read")
    instruction: str = recipe_field(DEFAULT_INSTRUCTION, "the OCR instruction it learns to answer")
    curve_every: int = recipe_field(500, "also measure held-out CER every N steps, on the first curve_lines held-out "
                                   "lines (0: at the end only)")
    curve_lines: int = recipe_field(50, "held-out lines of each point of the learning curve")

    def validate(self) -> None:
        """Types, then ranges; raise :class:`FieldError` on the first bad field."""
        super().validate()
        self.at_least(1, "lines", "heldout_lines", "max_steps", "batch_size", "threads", "max_new_tokens", "curve_lines")
        self.at_least(0, "anneal_steps", "curve_every")
        for name in ("learning_rate", "anneal_learning_rate"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_steps < 1.0:
            raise FieldError("warmup_steps", f"must be a fraction in [0, 1), got {self.warmup_steps}")

    def train_settings(self) -> dict[str, Any]:
        """The TrainConfig fields of the pretraining run (model, data and output folders aside)."""
        return {
            "train_mode": "full", "learning_rate": self.learning_rate, "max_steps": self.max_steps,
            "warmup_ratio": self.warmup_steps, "lr_scheduler_type": self.lr_scheduler_type, "optim": "adamw_torch",
            "weight_decay": 0.0, "per_device_train_batch_size": self.batch_size, "gradient_accumulation_steps": 1,
            "gradient_checkpointing": False, "seed": self.seed, "instruction": self.instruction,
            "train_split": "train", "val_split": "", "logging_steps": 50, "save_steps": self.max_steps,
            "save_total_limit": 1, "report_to": ["none"], "dataloader_num_workers": 0,
        }

    def anneal_settings(self) -> dict[str, Any]:
        """The TrainConfig fields of the annealing run that continues from the first one."""
        return {**self.train_settings(), "learning_rate": self.anneal_learning_rate, "max_steps": self.anneal_steps,
                "warmup_ratio": 0.0, "lr_scheduler_type": "linear", "save_steps": self.anneal_steps}


@dataclass
class ReaderReport:
    """What a build measured."""

    output_dir: str
    heldout_cer: float
    heldout_lines: int
    cpu_seconds: float
    wall_seconds: float
    train_loss: float
    curve: list[dict[str, float]] = field(default_factory=list)  # {step, cpu_s, cer}
    weights_sha256: str = ""


def read_lines(model, processor, images: Sequence[Any], instruction: str = DEFAULT_INSTRUCTION,
               max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy transcriptions of ``images`` by ``model`` as the served model makes them
    (:func:`gemma_ocr.training.cer_eval.generate_answers`), stripped."""
    return [t.strip() for t in generate_answers(model, processor, images, instruction, max_new_tokens, batch_size)]


def heldout_cer(model, processor, records, recipe: ReaderRecipe) -> float:
    """Micro CER of greedy readings of ``records`` (raw text, as evaluate.py's ``overall_cer``)."""
    predictions = read_lines(model, processor, [open_image(r.image_path) for r in records], recipe.instruction,
                             recipe.max_new_tokens)
    return aggregate(score_pairs(predictions, [r.text for r in records])).overall_cer


def _curve_callback(processor, records, recipe: ReaderRecipe, curve: list[dict[str, float]], first_step: int = 0):
    """A TrainerCallback that measures held-out CER every ``recipe.curve_every`` steps (CPU seconds beside it)."""
    from transformers import TrainerCallback  # the start-up time of `tiny-model --help`, which imports this module

    class LearningCurve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % recipe.curve_every == 0:
                step = first_step + state.global_step
                cer = heldout_cer(model, processor, records, recipe)
                curve.append({"step": step, "cpu_s": round(time.process_time(), 1), "cer": round(cer, 4)})
                log.info("step %d: held-out CER %.3f (%.0f CPU-s)", step, cer, time.process_time())

    return LearningCurve()


def _phase_config(settings: dict[str, Any], model: Path, data: Path, output: Path):
    from gemma_ocr.training.config import TrainConfig  # built from TRL's SFTConfig: tiny-model --help's start-up

    return TrainConfig.from_dict({**settings, "model_name": str(model), "input_data": str(data),
                                  "output_dir": str(output)}, source="reader recipe")


def train_reader(start: Path, data: Path, work: Path, recipe: ReaderRecipe, processor=None, curve_records=(),
                 curve: list[dict[str, float]] | None = None) -> tuple[Path, dict[str, Any], list]:
    """Train every weight of ``start`` on ``data`` (``work/train``), then anneal (``work/anneal``).

    Returns the trained folder (hub layout), the last run's metrics and the runs' configs.
    """
    from gemma_ocr.training.tune import tune  # torch, transformers, TRL: tiny-model --help's start-up

    def callbacks(first_step: int) -> list:
        if not (recipe.curve_every and processor is not None and curve is not None):
            return []
        return [_curve_callback(processor, list(curve_records), recipe, curve, first_step)]

    phases = [(recipe.train_settings(), start, work / "train", 0)]
    if recipe.anneal_steps:
        phases.append((recipe.anneal_settings(), work / "train", work / "anneal", recipe.max_steps))
    configs, result, trained = [], {}, start
    for settings, model, output, first_step in phases:
        config = _phase_config(settings, model, data, output)
        result = tune(config, callbacks=callbacks(first_step))
        to_hub_layout(output)
        configs.append(config)
        trained = output
    return trained, result, configs


def _weights_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def pretrain_reader(output_dir: str | os.PathLike[str] = LAYOUT.reader, recipe: ReaderRecipe | None = None,
                    work_dir: str | os.PathLike[str] | None = None, command: str | None = None,
                    family: str = "gemma3") -> ReaderReport:
    """Build the reader from random weights by ``recipe``; write it to ``output_dir`` only if it reaches its target.

    Data -> random start (``family``'s architecture in :data:`READERS`) -> :func:`train_reader` -> greedy
    held-out CER.

    ``work_dir`` keeps the data, the random start and the training run (default: a temporary folder, removed
    after a successful build). Raises :class:`GemmaOcrError` when the held-out CER misses ``target_cer``.
    """
    import torch  # the start-up time of `tiny-model --help`, which imports this module
    from transformers import AutoModelForImageTextToText  # tiny-model --help's start-up

    from gemma_ocr.training.tune import torch_threads  # torch, transformers, TRL: tiny-model --help's start-up

    recipe = recipe or ReaderRecipe()
    out = Path(output_dir)
    build, architecture, _ = READERS[family]
    with torch_threads(recipe.threads):
        cpu0, wall0 = time.process_time(), time.time()
        work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="tiny-reader-"))
        try:
            train_data = dataclasses.replace(READER_PRETRAINING, n_samples=recipe.lines, seed=recipe.data_seed)
            heldout_data = dataclasses.replace(READER_PRETRAINING, n_samples=recipe.heldout_lines, seed=recipe.heldout_seed)
            train_records = generate_dataset(work / "data" / "train", train_data)
            write_records(train_records, work / "data" / "train.json")
            heldout = generate_dataset(work / "data" / "heldout", heldout_data)
            start = build(work / "random", seed=recipe.seed, **architecture)
            processor = load_processor(str(start))
            curve: list[dict[str, float]] = []
            trained, result, configs = train_reader(start, work / "data" / "train.json", work, recipe, processor,
                                                    heldout[: recipe.curve_lines], curve)
            model = AutoModelForImageTextToText.from_pretrained(trained, dtype=torch.float32)
            cer = heldout_cer(model, load_processor(str(trained)), heldout, recipe)
            del model
            cpu, wall = time.process_time() - cpu0, time.time() - wall0
            log.info("reader: held-out CER %.4f on %d lines after %d steps (%.0f CPU-s, %.0f s wall)", cer,
                     len(heldout), recipe.max_steps + recipe.anneal_steps, cpu, wall)
            if not cer <= recipe.target_cer:
                raise GemmaOcrError(
                    f"the reader reached CER {cer:.4f} on {len(heldout)} held-out lines, above its target "
                    f"{recipe.target_cer}: nothing written to {out} (the run is kept in {work}); train longer (--max-steps)")
            report = ReaderReport(output_dir=str(out), heldout_cer=round(cer, 4), heldout_lines=len(heldout),
                                  cpu_seconds=round(cpu, 1), wall_seconds=round(wall, 1),
                                  train_loss=round(result["train_loss"], 4), curve=curve,
                                  weights_sha256=_weights_sha256(trained))
            _install(trained, out, recipe, configs, report, (heldout_data, train_data), command, family)
        except BaseException:
            work_dir or log.warning("the pretraining run is kept in %s", work)
            raise
    if not work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _install(trained: Path, out: Path, recipe: ReaderRecipe, configs, report: ReaderReport, data,
             command: str | None, family: str) -> None:
    """Copy the checkpoint files, the card and the model card into ``out`` (replaced as a whole)."""
    import torch  # the start-up time of `tiny-model --help`, which imports this module
    import transformers  # the start-up time of `tiny-model --help`, which imports this module

    heldout_data, train_data = data
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in CHECKPOINT_FILES:
            shutil.copy2(trained / name, tmp / name)
            (tmp / name).chmod(0o644)
        card = {
            "command": command or "python core/make_tiny_model.py --pretrain",
            "family": family,
            "architecture": READERS[family][1],
            "parameters": _parameter_count(tmp),
            "pretraining_data": dataclasses.asdict(train_data),
            "heldout_data": dataclasses.asdict(heldout_data),
            "recipe": dataclasses.asdict(recipe),
            "train_configs": [c.to_dict() | {"model_name": "<previous run>" if i else "<random start>",
                                              "input_data": "<pretraining data>", "output_dir": "<work folder>"}
                              for i, c in enumerate(configs)],
            "heldout_cer": report.heldout_cer,
            "heldout_metric": "micro CER, raw text, greedy, max_new_tokens "
                              f"{recipe.max_new_tokens}, through the processor's chat template",
            "target_cer": recipe.target_cer,
            "cpu_seconds": report.cpu_seconds,
            "wall_seconds": report.wall_seconds,
            "train_loss": report.train_loss,
            "learning_curve": report.curve,
            "weights_sha256": report.weights_sha256,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        atomic_write_json(tmp / CARD_FILE, card)
        atomic_write_text(tmp / "README.md", model_card(card))
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _parameter_count(folder: Path) -> int:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _architecture_text(card: dict[str, Any]) -> tuple[str, str, str]:
    """The model card's class name, role sentence and architecture paragraph of the card's family."""
    arch = card["architecture"]
    if card.get("family", "gemma3") == "gemma4":
        role = (f"It is the Gemma 4 twin of the suite's default model ({LAYOUT.reader.name}): pass it as\n"
                "`--base-model` and the main job fine-tunes it on a distribution it was not pretrained on.")
        return "Gemma4ForConditionalGeneration", role, f"""- Architecture: lines kept at their aspect ratio in {arch['patch_size']} px patches, pooled 2x2 into at
  most {arch['image_token_budget']} image tokens (the processor's `max_soft_tokens`; the model takes every budget);
  Gemma 4 vision width {arch['vision_hidden_size']}, {arch['vision_layers']} layers; text width
  {arch['hidden_size']}, {arch['num_layers']} layers, 2 heads, 1 key/value head, no per-layer embeddings, no audio
  tower; gemma-ocr's character tokenizer with Gemma 4's special tokens; gemma-ocr's Gemma 4 chat template.
  Weights under the hub's names (`model.vision_tower.*`, `model.embed_vision.*`, `model.language_model.*`)."""
    role = ("It is the suite's default\n"
            "model: the main job fine-tunes it on a distribution it was not pretrained on.")
    return "Gemma3ForConditionalGeneration", role, f"""- Architecture: {arch['image_size']} px images, {arch['patch_size']} px patches, {arch['mm_tokens_per_image']}
  image tokens; SigLIP width {arch['vision_hidden_size']}, {arch['vision_layers']} layers; text width
  {arch['hidden_size']}, {arch['num_layers']} layers, 2 heads, 1 key/value head; gemma-ocr's character tokenizer
  with Gemma 3's special and newline-run tokens; Gemma 3's chat template. Weights under the hub's names
  (`vision_tower.vision_model.*`)."""


def model_card(card: dict[str, Any]) -> str:
    """The folder's README: what the reader is, what it reads, how it was built and how well it reads."""
    data = card["pretraining_data"]
    recipe = card["recipe"]
    architecture, role, shape = _architecture_text(card)
    return f"""# {READERS[card.get("family", "gemma3")][2].name}

A tiny `{architecture}` ({card['parameters']:,} parameters, fp32) pretrained from random
weights by gemma-ocr's own training code until it reads printed lines of digits. {role}

{shape}
- Pretraining data: {data['n_samples']:,} synthetic lines of {data['digits_length'][0]}-{data['digits_length'][1]}
  digits in Noto Sans (seed {data['seed']}). It reads nothing else well: fine-tune it for other text.
- Training: every weight, AdamW, learning rate {recipe['learning_rate']} (schedule {recipe['lr_scheduler_type']},
  {recipe['warmup_steps']:.0%} warm-up), batch {recipe['batch_size']}, {recipe['max_steps']:,} steps, then
  {recipe['anneal_steps']:,} steps from {recipe['anneal_learning_rate']} falling linearly to 0; seed {recipe['seed']},
  {recipe['threads']} torch thread(s): {card['cpu_seconds']:.0f} CPU seconds ({card['wall_seconds']:.0f} s wall,
  on a shared machine).
- Held-out CER: **{card['heldout_cer']}** on {card['heldout_data']['n_samples']} lines rendered with seed
  {card['heldout_data']['seed']} (target <= {card['target_cer']}; {card['heldout_metric']}).

Rebuild (deterministic on one CPU; `reader.json` holds the full configuration and the weights' SHA-256):

```bash
{card['command']}
```
"""
