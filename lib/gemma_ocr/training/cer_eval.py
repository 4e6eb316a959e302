"""Generated-text validation during training: CER and F1 of greedy answers on a fixed validation slice.

Teacher-forced ``eval_loss`` is not what OCR users measure: a lower loss can come with more hallucinated or
cut-off lines. At every evaluation (``eval_steps``, and before the first step with ``eval_on_start``) the
trainer of :func:`gemma_ocr.training.tune` reads the first ``cer_eval_samples`` images of the validation
split by greedy generation and scores the answers with the project's own metrics
(:func:`gemma_ocr.scoring.results.score_samples`, the scoring of evaluate.py): ``eval_cer``, ``eval_f1``,
``eval_normalized_cer`` and ``eval_normalized_f1`` (micro averages) go into the evaluation's metrics next
to ``eval_loss``, so they reach W&B, TensorBoard, ``train_metrics.json``'s history, the pruner of a search,
``metric_for_best_model`` and early stopping.

The answers are made as the served model makes them: the image opened by the project's one decoding rule
(:func:`gemma_ocr.data.images.open_image`), the instruction after it in one user turn through the
processor's own chat template (:func:`gemma_ocr.training.data.build_conversation`, the message the embedded
server builds from evaluate.py's request), greedy decoding with the model's generation config, the answer
decoded without special tokens and not stripped. So on those samples the figure is the one evaluate.py
reports through the served checkpoint with ``--max-tokens`` equal to :attr:`CerEvaluation.max_new_tokens`.

It is a hook of the trainer's evaluation loop rather than a ``TrainerCallback``: the Trainer logs an
evaluation's metrics before callbacks see them, so a callback could not put CER into the same record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_ocr.data.images import open_image
from gemma_ocr.modeling.families import family_of_model
from gemma_ocr.modeling.thinking import ThinkingChannel, answer_ids, thinking_off
from gemma_ocr.scoring.results import STATUS_EMPTY, STATUS_OK, score_samples
from gemma_ocr.training.data import build_conversation

log = logging.getLogger(__name__)

#: The metric names the evaluation adds (each with the ``eval_`` prefix): micro averages over the slice.
CER_METRICS = ("cer", "f1", "normalized_cer", "normalized_f1")
#: Added beside them: the seconds the generation and scoring took.
RUNTIME_METRIC = "cer_runtime"
#: The default answer limit: twice the longest reference of the slice in tokens, plus this margin.
MAX_TOKENS_MARGIN = 16


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (``eval_cer``, ``loss``, ``eval_f1``...) is the better one."""
    name = metric.removeprefix("eval_")
    return name.endswith("loss") or name.endswith("cer")


def is_cer_metric(metric: str | None) -> bool:
    """Whether ``metric`` is one of those this evaluation produces (with or without the ``eval_`` prefix)."""
    return bool(metric) and metric.removeprefix("eval_") in CER_METRICS  # type: ignore[union-attr]


def generate_answers(model: Any, processor: Any, images: Sequence[Any], instruction: str, max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers of ``model`` to ``images``, each sent with ``instruction`` as the served model gets it.

    One user turn (the image, then the instruction) through ``processor.apply_chat_template`` with the
    generation prompt, rows left-padded in batches of ``batch_size``; the KV cache is used even where
    training turned it off; thinking is off and any thinking channel dropped; each answer is decoded without special
    tokens (what the server returns).
    """
    import torch  # the start-up time of `tiny-model --help`: the reader imports this module

    tokenizer = processor.tokenizer
    family = family_of_model(model.config)
    channel = ThinkingChannel.of(family, tokenizer)  # thinking never reaches an answer, as on the server
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start:start + max(1, batch_size)]
            batch = processor.apply_chat_template([build_conversation(image, None, instruction) for image in chunk],
                                                  add_generation_prompt=True, tokenize=True, return_dict=True,
                                                  return_tensors="pt", processor_kwargs={"padding": True},
                                                  **thinking_off(family)).to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)
            rows = out[:, batch["input_ids"].shape[1]:].tolist()
            answers += tokenizer.batch_decode([answer_ids(channel, row) for row in rows], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def default_max_new_tokens(processor: Any, texts: Sequence[str]) -> int:
    """Twice the longest of ``texts`` in tokens, plus :data:`MAX_TOKENS_MARGIN`: an answer that long is wrong anyway."""
    lengths = [len(ids) for ids in processor.tokenizer(list(texts), add_special_tokens=False)["input_ids"]] or [0]
    return 2 * max(lengths) + MAX_TOKENS_MARGIN


@dataclass
class CerEvaluation:
    """The fixed validation slice and how its answers are generated; :meth:`evaluate` scores a model on it."""

    processor: Any
    image_paths: list[str]
    references: list[str]
    instruction: str
    max_new_tokens: int
    batch_size: int = 8
    _images: list[Any] = field(default_factory=list, repr=False)

    @classmethod
    def from_config(cls, config: Any, processor: Any, val_ds: Any) -> CerEvaluation | None:
        """The evaluation ``config`` asks for on the first ``cer_eval_samples`` rows of ``val_ds`` (None: off)."""
        if not config.cer_eval_samples or val_ds is None or len(val_ds) == 0:
            return None
        rows = val_ds.select(range(min(config.cer_eval_samples, len(val_ds))))
        paths, texts = list(rows["image_path"]), [t or "" for t in rows["text"]]
        tokens = config.cer_eval_max_tokens or default_max_new_tokens(processor, texts)
        evaluation = cls(processor, paths, texts, config.instruction, tokens, config.per_device_eval_batch_size)
        log.info("CER evaluation: %d validation images at every evaluation, greedy, up to %d new tokens (evaluate.py "
                 "--max-tokens %d on the served model gives the same figures)", len(paths), tokens, tokens)
        return evaluation

    def images(self) -> list[Any]:
        """The slice's images, decoded once by the project's rule."""
        if not self._images:
            self._images = [open_image(path) for path in self.image_paths]
        return self._images

    def predict(self, model: Any, rank: int = 0, world_size: int = 1) -> list[tuple[int, str]]:
        """``(index, answer)`` for this process's share of the slice (every ``world_size``-th sample)."""
        indices = list(range(rank, len(self.image_paths), world_size))
        images = self.images()
        answers = generate_answers(model, self.processor, [images[i] for i in indices], self.instruction,
                                   self.max_new_tokens, self.batch_size)
        return list(zip(indices, answers))

    def score(self, predictions: Sequence[tuple[int, str]], prefix: str = "eval") -> dict[str, float]:
        """The metrics of ``(index, answer)`` pairs covering the slice, scored as evaluate.py scores a results file."""
        answers = dict(predictions)
        samples = [{"label": self.references[i], "prediction": answers[i],
                    "status": STATUS_OK if answers[i].strip() else STATUS_EMPTY} for i in sorted(answers)]
        metrics = score_samples(samples)
        raw, normalized = metrics["raw"], metrics["normalized"]
        return {f"{prefix}_cer": raw["overall_cer"], f"{prefix}_f1": raw["overall_f1"],
                f"{prefix}_normalized_cer": normalized["overall_cer"], f"{prefix}_normalized_f1": normalized["overall_f1"]}

    def evaluate(self, model: Any, prefix: str = "eval", accelerator: Any = None) -> dict[str, float]:
        """Generate and score on the whole slice; with several processes each reads its share and all get the result."""
        started = time.perf_counter()
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
        predictions = self.predict(model, rank, world)
        if world > 1:
            from accelerate.utils import gather_object  # it imports torch: the reader's start-up time, as above

            predictions = gather_object(predictions)
        metrics = self.score(predictions, prefix)
        metrics[f"{prefix}_{RUNTIME_METRIC}"] = round(time.perf_counter() - started, 3)
        log.info("%s CER %.4f (normalized %.4f), F1 %.4f on %d images in %.1f s", prefix, metrics[f"{prefix}_cer"],
                 metrics[f"{prefix}_normalized_cer"], metrics[f"{prefix}_f1"], len(self.image_paths),
                 metrics[f"{prefix}_{RUNTIME_METRIC}"])
        return metrics
