"""``tune(config)``: one fine-tuning run (LoRA, or every weight) with TRL's SFTTrainer, the function the search calls."""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, PrinterCallback, ProgressCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, check_writable, out_of_room, read_json
from gemma_ocr.modeling.families import family_of, keep_base_fields
from gemma_ocr.modeling.loading import compute_dtype, image_kwargs, import_unsloth, load_model
from gemma_ocr.training import speed
from gemma_ocr.training.cer_eval import CER_METRICS, RUNTIME_METRIC, CerEvaluation, lower_is_better
from gemma_ocr.training.config import TrainConfig
from gemma_ocr.training.data import OcrCollator, load_data
from gemma_ocr.training.tracking import setup_tracking

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
METRICS_FILE = "train_metrics.json"


WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin")


def checkpoint_problem(folder: Path) -> str:
    """Why a ``checkpoint-N`` folder cannot be resumed from, or "" when it is complete.

    The Trainer writes the weights, then optimizer and scheduler state, and ``trainer_state.json`` last:
    a run killed while saving leaves that file missing or cut short.
    """
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json: the run stopped while saving it"
    try:
        if "global_step" not in json.loads(state.read_text(encoding="utf-8")):
            return "trainer_state.json has no global_step"
    except (ValueError, UnicodeDecodeError):
        return "trainer_state.json is cut short: the run stopped while saving it"
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in WEIGHT_FILES):
        return "no model weights"
    return ""


def newest_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete ``checkpoint-*`` in ``output_dir`` (None if none), and the newer incomplete ones skipped
    (a run killed while saving), each with its problem."""
    out = Path(output_dir)
    steps = {}
    for folder in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if out.is_dir() else ():
        number = folder.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if folder.is_dir() and number.isdigit():
            steps[int(number)] = folder
    skipped = []
    for step in sorted(steps, reverse=True):
        problem = checkpoint_problem(steps[step])
        if not problem:
            return steps[step], skipped
        skipped.append(f"{steps[step].name} ({problem})")
    return None, skipped


def resolve_resume(config: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``True`` -> the newest complete ``checkpoint-*`` in output_dir (None if none).

    Newer incomplete ones (a run killed while saving) are skipped with a warning naming each.
    """
    resume = config.resume_from_checkpoint
    if not resume:
        return None
    if resume is True:
        newest, skipped = newest_complete_checkpoint(config.output_dir)
        if newest is not None:
            if skipped:
                log.warning("resume: skipped %s; resuming from %s", "; ".join(skipped), newest.name)
            return str(newest)
        if skipped:
            log.warning("resume: no complete checkpoint in %s (skipped %s); starting from step 0", config.output_dir,
                        "; ".join(skipped))
        else:
            log.info("resume: no checkpoint in %s yet, starting from step 0", config.output_dir)
        return None
    path = Path(str(resume))
    problem = checkpoint_problem(path) if path.is_dir() else "no such folder"
    if problem:
        raise GemmaOcrError(f"resume_from_checkpoint {path}: not a complete training checkpoint ({problem}); "
                            f"give another one, or --resume without a folder for the newest complete one")
    return str(path)


def sft_arguments(config: TrainConfig, reporters: list[str], has_eval: bool, resuming: bool):
    """The ``trl.SFTConfig`` of a run: every trainer field of ``config``, with the automatic ones resolved.

    bf16 on a bf16 GPU or with 4-bit, fp32 on a CPU (never fp16); no evaluation without a validation
    split; no evaluation before the first step when resuming; checkpoints at every evaluation when the best is
    kept by a metric and save_steps is not set; dataloader workers, pinned memory and the CPU switch follow the
    machine unless set.
    """
    cuda = torch.cuda.is_available()

    def auto(value, default):
        return default if value is None else value

    args = config.trainer_arguments()
    metric = config.metric_for_best_model if has_eval else None
    args.update(
        metric_for_best_model=metric,
        load_best_model_at_end=auto(config.load_best_model_at_end, metric is not None) and has_eval,
        # transformers takes every metric not ending in "loss" for one where higher is better: not CER
        greater_is_better=auto(config.greater_is_better, None if metric is None else not lower_is_better(metric)),
        run_name=config.run_name or Path(config.output_dir).name,
        warmup_steps=config.warmup_steps or config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        bf16=auto(config.bf16, config.load_in_4bit or compute_dtype() == torch.bfloat16),
        data_seed=auto(config.data_seed, config.seed),
        eval_strategy=config.eval_strategy if has_eval else "no",
        eval_steps=config.eval_steps if has_eval else None,
        save_steps=config.checkpoint_steps(),  # not set: at every evaluation when the best is kept by a metric
        eval_on_start=config.eval_on_start and has_eval and not resuming,
        report_to=reporters,
        resume_from_checkpoint=None,  # tune() resolves it (resolve_resume) and passes it to train()
        **speed.trainer_arguments(config, cuda),  # checkpointing, offloading, Liger, dataloader workers
        # without CUDA, run on the CPU explicitly: that is also what makes a multi-process launch use gloo DDP
        use_cpu=auto(config.use_cpu, not cuda),
    )
    try:
        return SFTConfig(**args)
    except ValueError as e:  # a combination transformers/TRL refuse: one line, before any model loads
        raise GemmaOcrError("training arguments: " + " ".join(str(e).split())) from None


def _make_trainer_class():
    """``SFTTrainer`` that falls back to the model's own loss where TRL's fused (Triton) LM head cannot run.

    TRL's SFTTrainer computes the loss with a Triton kernel that only runs on CUDA/XPU (or in Triton's CPU
    interpreter); on a CPU the plain ``Trainer`` loss (the model's cross-entropy on the same labels) is used
    instead, and the token accuracy metric is computed from the logits.
    """
    # transformers' Trainer and TRL's SFTTrainer load transformers.integrations, which prints a W&B line when
    # WANDB_MODE is set: loaded when a trainer is built, so `sft_gemma.py --print-config` prints its JSON alone
    from transformers import Trainer
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    class OcrSFTTrainer(SFTTrainer):
        #: Greedy answers on a fixed validation slice, scored at every evaluation (None: off).
        cer_evaluation: CerEvaluation | None = None

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """The loss evaluation, then eval_cer, eval_f1 ... of the CER evaluation into the same metrics (so
            they are logged, reach the callbacks and count for metric_for_best_model)."""
            output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                             ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            if self.cer_evaluation is not None and metric_key_prefix == "eval":
                output.metrics.update(self.cer_evaluation.evaluate(self.model, metric_key_prefix, self.accelerator))
            return output

        def _fused_head_usable(self, model) -> bool:
            device = next(model.parameters()).device
            return getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and speed.triton_kernels_run_on(device.type)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._fused_head_usable(model):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            with torch.no_grad():
                labels = inputs["labels"][:, 1:]
                predicted = outputs.logits[:, :-1].argmax(-1)
                mask = labels != -100
                correct = self.accelerator.gather_for_metrics(((predicted == labels) & mask).sum()).sum()
                valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
                self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
            return (loss, outputs) if return_outputs else loss

    return OcrSFTTrainer


def build_trainer(config: TrainConfig, train_ds, val_ds=None, reporters: list[str] | None = None,
                  resuming: bool = False, callbacks: list | None = None, quiet: bool = False):
    """Load the model (LoRA attached or every weight trainable, fast path applied) and build the SFT trainer of ``tune()``; return ``(trainer, processor)``.

    ``quiet``: without the trainer's progress bar and printed per-step dicts (a callback of ``callbacks`` shows
    the progress, :func:`gemma_ocr.training.tracking.reporting_progress`).
    benchmarks/train_throughput.py times the project's training through this same function.
    """
    args = sft_arguments(config, reporters or [], has_eval=val_ds is not None, resuming=resuming)  # fail before loading
    set_seed(config.seed)  # the LoRA initialisation draws from the global generators: the same seed, the same run
    model, processor = load_model(config)
    collator = OcrCollator(processor, config.instruction, config.max_seq_length, family=family_of(model.config))
    callbacks = list(callbacks or [])
    if config.early_stopping_patience is not None and val_ds is not None:
        callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
    )
    if quiet:
        trainer.remove_callback(ProgressCallback)  # the bar, and the dicts it writes
        trainer.remove_callback(PrinterCallback)  # the dicts printed instead with disable_tqdm
    trainer.cer_evaluation = CerEvaluation.from_config(config, processor, val_ds)
    return trainer, processor


#: The evaluation figures of a run: in its result for the saved model, and per step in its history.
EVAL_METRICS = ("eval_loss", *(f"eval_{name}" for name in CER_METRICS))


def _history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("step", "epoch", "loss", *EVAL_METRICS, f"eval_{RUNTIME_METRIC}", "eval_runtime", "learning_rate",
            "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy", "train_loss")
    return [{k: v for k, v in entry.items() if k in keep} for entry in log_history]


def chance_loss(model: Any) -> float | None:
    """The validation loss of a model that guesses uniformly over its vocabulary: ln(vocabulary size)."""
    config = getattr(model, "config", None)
    vocab = getattr(getattr(config, "text_config", config), "vocab_size", None)
    return math.log(vocab) if vocab else None


def tune(config: TrainConfig, callbacks: list | None = None) -> dict[str, Any]:
    """Fine-tune ``config.model_name`` (LoRA adapters, or every weight with ``train_mode: full``); evaluate on the
    validation split during training.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (e.g. a pruning callback reading
    ``metrics["eval_loss"]`` or ``metrics["eval_cer"]`` in ``on_evaluate``); an exception they raise propagates to
    the caller. Writes the adapter (``full``: the whole model), the processor, ``train_config.json`` and
    ``train_metrics.json`` to ``config.output_dir`` and returns ``{eval_loss, eval_cer, eval_f1,
    eval_normalized_cer, eval_normalized_f1, eval_step, first_eval_loss, first_eval_cer, best_global_step,
    train_loss, global_step, output_dir, history, ...}``: the eval figures are those of the saved model (the best
    checkpoint with ``metric_for_best_model``). GPU/CPU memory is released before returning.
    """
    config.validate()
    with torch_threads(config.torch_threads):
        return _train(config, callbacks)


def _train(config: TrainConfig, callbacks: list | None) -> dict[str, Any]:
    check_writable(config.output_dir, "output_dir", folder=True)
    started = time.time()
    if config.backend == "unsloth":
        import_unsloth()  # first: unsloth patches transformers, peft and trl when it is imported
    if config.backend == "transformers":  # fail on a wrong folder or image setting before reading any data
        image_kwargs(config, family_of(config.model_name))
    tracking = setup_tracking(config)
    log.info("speed and memory switches: %s", speed.describe(config))
    train_ds, val_ds = load_data(config)
    resume = resolve_resume(config)
    model = processor = trainer = None
    try:
        trainer, processor = build_trainer(config, train_ds, val_ds, reporters=tracking.report_to,
                                           resuming=resume is not None, callbacks=[*(callbacks or []), *tracking.callbacks],
                                           quiet=tracking.quiet)
        model = trainer.model
        if resume:
            log.info("resuming from %s", resume)
        with stopped_by_a_full_disk(config, trainer):
            train_output = trainer.train(resume_from_checkpoint=resume)
        state = trainer.state
        history = _history(state.log_history)
        final_eval = _saved_model_eval(trainer, history) if val_ds is not None else {}
        history = _history(state.log_history)  # with the final evaluation, when there was one
        evals = [e for e in history if "eval_loss" in e]
        eval_loss = final_eval.get("eval_loss")
        train_loss = train_output.training_loss
        if eval_loss is not None and not math.isfinite(eval_loss):
            log.warning("eval_loss is %s: training diverged (lower the learning rate)", eval_loss)
        cer_evaluation = trainer.cer_evaluation
        result: dict[str, Any] = {
            **{name: final_eval.get(name) for name in EVAL_METRICS},
            "eval_step": final_eval.get("step"),
            "first_eval_loss": evals[0]["eval_loss"] if evals else None,
            "first_eval_cer": evals[0].get("eval_cer") if evals else None,
            "chance_eval_loss": chance_loss(model),
            "cer_eval_samples": len(cer_evaluation.image_paths) if cer_evaluation else 0,
            "cer_eval_max_tokens": cer_evaluation.max_new_tokens if cer_evaluation else None,
            "metric_for_best_model": trainer.args.metric_for_best_model,
            "best_metric": state.best_metric,
            "best_global_step": state.best_global_step,
            "best_model_checkpoint": state.best_model_checkpoint,
            "early_stopped": bool(config.early_stopping_patience) and state.global_step < state.max_steps,
            "train_loss": train_loss,
            "train_seconds": train_output.metrics.get("train_runtime"),
            "global_step": state.global_step,
            "epoch": state.epoch,
            "output_dir": str(config.output_dir),
            "resumed_from": resume,
            "train_samples": len(train_ds),
            "eval_samples": len(val_ds) if val_ds is not None else 0,
            "world_size": trainer.args.world_size,
            "runtime_s": round(time.time() - started, 2),
            "history": history,
        }
        with stopped_by_a_full_disk(config, trainer):
            trainer.save_model(config.output_dir)
            if trainer.is_world_process_zero():
                processor.save_pretrained(config.output_dir)
                keep_base_config_fields(config)
                atomic_write_json(Path(config.output_dir) / CONFIG_FILE, config.to_dict())
                atomic_write_json(Path(config.output_dir) / METRICS_FILE, result)
            cer = result["eval_cer"]
            log.info("done: %d steps, train_loss %.4f, eval_loss %s%s%s -> %s", state.global_step, train_loss,
                     f"{eval_loss:.4f}" if eval_loss is not None else "n/a",
                     f", eval_cer {cer:.4f}" if cer is not None else "",
                     f" (the best checkpoint by {result['metric_for_best_model']}: step {result['eval_step']})"
                     if trainer.args.load_best_model_at_end else "", config.output_dir)
        return result
    finally:
        del trainer, model, processor
        tracking.finish()
        release_memory()


def keep_base_config_fields(config: TrainConfig) -> None:
    """A whole saved model (``train_mode: full``) keeps the config fields of its base that transformers does not write
    again (Gemma 4's ``global_head_dim``, :func:`gemma_ocr.modeling.families.keep_base_fields`)."""
    saved = Path(config.output_dir) / "config.json"
    base = Path(config.model_name) / "config.json"
    if config.train_mode != "full" or not saved.is_file() or not base.is_file():
        return
    cfg = read_json(saved, "model config")
    if keep_base_fields(cfg, read_json(base, "model config")):
        atomic_write_json(saved, cfg)


@contextmanager
def stopped_by_a_full_disk(config: TrainConfig, trainer: Any) -> Iterator[None]:
    """Turn a write that fails for lack of room (a full disk, a quota) while training or saving into one
    :class:`GemmaOcrError` line: the step, the newest complete checkpoint and how to go on from it."""
    try:
        yield
    except Exception as e:
        problem = out_of_room(e, config.output_dir)
        if problem is None:
            raise
        newest, _ = newest_complete_checkpoint(config.output_dir)
        then = (f"the newest complete checkpoint is {newest}; free space, then rerun with --resume to go on from it"
                if newest else "no complete checkpoint was saved; free space, then rerun")
        raise GemmaOcrError(f"training stopped at step {trainer.state.global_step}: cannot write in "
                            f"{config.output_dir} ({problem}); {then}") from None


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (0: leave torch's setting), then restore the previous count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _saved_model_eval(trainer: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation figures of the model the run saves: the best checkpoint's when the trainer loaded it at the
    end, else the last step's (evaluated now when the last step had no evaluation)."""
    state, args = trainer.state, trainer.args
    evals = {e["step"]: e for e in history if "eval_loss" in e}
    if args.load_best_model_at_end and state.best_global_step in evals:
        return evals[state.best_global_step]
    if state.global_step in evals:
        return evals[state.global_step]
    return {**trainer.evaluate(), "step": state.global_step}


def release_memory() -> None:
    """Collect garbage and return cached CUDA memory (the search runs many tune() calls in one process)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
