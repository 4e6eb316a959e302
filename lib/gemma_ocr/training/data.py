"""OCR conversations for supervised fine-tuning: dataset splits and the batch collator.

One sample is a two-turn conversation: the user sends the image and the instruction, the
assistant answers with the transcription. The collator tokenises the prompt exactly as the model
sees it at inference (chat template with the generation prompt) and the answer after it, so the
loss covers the answer and the family's end-of-turn token (Gemma 3 ``<end_of_turn>``, Gemma 4 ``<turn|>``) only;
prompt, image tokens and padding are -100.
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gemma_ocr.data.images import check_images, open_image
from gemma_ocr.data.records import OcrRecord, load_records
from gemma_ocr.data.split import parse_split_spec
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.modeling.families import ModelFamily, family_of_processor
from gemma_ocr.modeling.thinking import thinking_off

if TYPE_CHECKING:
    from datasets import Dataset

    from gemma_ocr.training.config import TrainConfig

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def build_conversation(image: Any, text: str | None, instruction: str) -> list[dict[str, Any]]:
    """The chat messages of one sample: user (image + instruction), then assistant (``text``) if given."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": instruction}]}
    ]
    if text is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
    return messages


def split_records(records: list[OcrRecord], spec: str | None, source: str, what: str) -> list[OcrRecord]:
    """Apply a ``train[:90%]`` style spec to ``records``; an empty result is one clear error."""
    if not spec:
        return []
    selected = records[parse_split_spec(spec, len(records))]
    if not selected:
        raise GemmaOcrError(
            f"{source}: the {what} split {spec!r} is empty ({len(records)} records in the file); "
            f"add data or widen {what}_split"
        )
    return selected


def load_data(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """Read ``config.input_data`` and cut the train/validation splits into ``datasets.Dataset`` objects.

    Columns: ``image_path`` (absolute) and ``text``. Images are checked up front (one clear line for a
    missing or unreadable file) unless ``config.check_images`` is false. ``val_split`` empty -> no validation.
    """
    # the start-up time of `tiny-model --help`: the reader imports this module (through cer_eval)
    from datasets import Dataset

    if not Path(config.input_data).is_file():
        raise GemmaOcrError(
            f"OCR data file not found: {config.input_data} (pass --input-data, or create the default with "
            "`python core/make_synthetic_data.py && python core/split_dataset.py`)"
        )
    records = load_records(config.input_data)
    if not records:
        raise GemmaOcrError(f"{config.input_data}: no records (the training split would be empty)")
    train = split_records(records, config.train_split, config.input_data, "train")
    val = split_records(records, config.val_split, config.input_data, "val") if config.val_split else []
    if config.max_train_samples:
        train = train[: config.max_train_samples]
    if config.max_eval_samples:
        val = val[: config.max_eval_samples]
    if config.check_images:
        check_images(train + val, config.input_data)
    log.info("data: %d train, %d validation records from %s", len(train), len(val), config.input_data)

    def to_ds(rs: list[OcrRecord]) -> Dataset:
        return Dataset.from_list([{"image_path": r.image_path, "text": r.text} for r in rs])

    return to_ds(train), (to_ds(val) if val else None)


@dataclass
class OcrCollator:
    """Turn ``{"image_path", "text"}`` examples into a training batch of the model ``family``.

    Output: ``input_ids``, ``attention_mask``, ``pixel_values``, ``labels`` (answer + the family's end-of-turn
    token; everything else -100) and the family's extra processor keys: Gemma 3 ``token_type_ids`` (1 on image
    tokens), Gemma 4 ``mm_token_type_ids`` (1 on image tokens) and ``image_position_ids`` (per image, like
    ``pixel_values``). Right padding. ``family``: the processor's when not given.
    """

    processor: Any
    instruction: str
    max_length: int | None = None
    family: ModelFamily | None = None
    _prompt_cache: dict[str, str] = field(default_factory=dict, repr=False)
    _warned: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = family_of_processor(self.processor)

    def prompt_text(self) -> str:
        if "prompt" not in self._prompt_cache:
            messages = build_conversation(None, None, self.instruction)
            self._prompt_cache["prompt"] = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **thinking_off(self.family)
            )
        return self._prompt_cache["prompt"]

    def encode(self, image: Any, text: str) -> dict[str, Any]:
        """One example as unpadded lists plus its pixel values."""
        tok = self.processor.tokenizer
        prompt = self.processor(
            text=[self.prompt_text()], images=[[image]], add_special_tokens=False, return_tensors="pt"
        )
        family: Any = self.family
        prompt_ids = prompt["input_ids"][0].tolist()
        answer_ids = tok(text.strip() + family.end_of_turn, add_special_tokens=False)["input_ids"]
        if self.max_length is not None and len(prompt_ids) + len(answer_ids) > self.max_length:
            room = self.max_length - len(prompt_ids)
            if room < 1:
                raise GemmaOcrError(
                    f"max_seq_length {self.max_length} is shorter than the prompt ({len(prompt_ids)} tokens with the "
                    "image tokens); raise max_seq_length"
                )
            if not self._warned:
                log.warning("an answer longer than max_seq_length %d was truncated", self.max_length)
                self._warned = True
            answer_ids = answer_ids[:room]
        per_token = {key: (prompt[key][0].tolist() if key in prompt else [0] * len(prompt_ids)) + [0] * len(answer_ids)
                     for key in family.token_keys}
        missing = [key for key in family.image_keys if key not in prompt]
        if missing:
            raise GemmaOcrError(f"the {family.title} processor gave no {', '.join(missing)}; the model needs them")
        return {
            "input_ids": prompt_ids + answer_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
            **per_token,
            "pixel_values": prompt["pixel_values"],
            **{key: prompt[key] for key in family.image_keys},
        }

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch  # the start-up time of `tiny-model --help`: the reader imports this module (through cer_eval)

        encoded = []
        for ex in examples:
            image = ex["image"] if "image" in ex else open_image(ex["image_path"])
            encoded.append(self.encode(image, ex.get("text") or ""))
        pad_id = self.processor.tokenizer.pad_token_id
        length = max(len(e["input_ids"]) for e in encoded)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([e[key] + [value] * (length - len(e[key])) for e in encoded], dtype=torch.long)

        input_ids = pad("input_ids", pad_id)
        attention = torch.tensor(
            [[1] * len(e["input_ids"]) + [0] * (length - len(e["input_ids"])) for e in encoded], dtype=torch.long
        )
        family: Any = self.family
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            **{key: pad(key, 0) for key in family.token_keys},
            "pixel_values": torch.cat([e["pixel_values"] for e in encoded], dim=0),
            **{key: torch.cat([e[key] for e in encoded], dim=0) for key in family.image_keys},
            "labels": pad("labels", IGNORE_INDEX),
        }
