"""The OCR collator: labels cover the answer and <end_of_turn> only; token_type_ids mark the image."""

from __future__ import annotations

import pytest
from PIL import Image

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.training.data import IGNORE_INDEX, OcrCollator, build_conversation
from tests.helpers.sft_fixtures import tiny_model_dir  # noqa: F401


@pytest.fixture(scope="module")
def processor(tiny_model_dir):  # noqa: F811
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_labels_mask_everything_but_the_answer(processor, tmp_path):
    tok = processor.tokenizer
    images = []
    for i, size in enumerate([(120, 30), (60, 60)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size, "white").save(path)
        images.append(str(path))
    answers = ["Total: 42", "០១២ 發票號碼 long answer"]
    collator = OcrCollator(processor, "請給我 OCR 結果", max_length=8192)
    batch = collator([{"image_path": p, "text": t} for p, t in zip(images, answers)])

    ids, labels, att, tti = batch["input_ids"], batch["labels"], batch["attention_mask"], batch["token_type_ids"]
    assert ids.shape == labels.shape == att.shape == tti.shape
    assert batch["pixel_values"].shape[0] == 2
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    for row, answer in enumerate(answers):
        kept = labels[row][labels[row] != IGNORE_INDEX].tolist()
        # exactly the answer followed by <end_of_turn>
        assert kept[-1] == eot
        assert tok.decode(kept[:-1]) == answer
        # image tokens, prompt and padding are all ignored
        image_positions = ids[row] == tok.image_token_id
        assert image_positions.sum() == processor.image_seq_length
        assert (labels[row][image_positions] == IGNORE_INDEX).all()
        assert (labels[row][att[row] == 0] == IGNORE_INDEX).all()
        assert (tti[row] == image_positions.long()).all()
        # the unmasked labels sit at the end of the real tokens, right after the generation prompt
        n = int(att[row].sum())
        first = int((labels[row] != IGNORE_INDEX).nonzero()[0])
        assert first + len(kept) == n
        prompt = tok.decode(ids[row][:first])
        assert prompt.startswith("<bos><start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
        assert "請給我 OCR 結果" in prompt
    # right padding with the pad token
    shorter = int(att[0].sum())
    assert (ids[0][shorter:] == tok.pad_token_id).all()


def test_prompt_matches_the_chat_template_at_inference(processor):
    collator = OcrCollator(processor, "請給我 OCR 結果")
    expected = processor.apply_chat_template(build_conversation(None, None, "請給我 OCR 結果"), tokenize=False,
                                             add_generation_prompt=True)
    assert collator.prompt_text() == expected
    full = processor.apply_chat_template(build_conversation(None, "abc", "請給我 OCR 結果"), tokenize=False)
    assert full == expected + "abc<end_of_turn>\n"


def test_long_answer_truncated_and_too_short_limit_is_an_error(processor):
    image = Image.new("RGB", (50, 20), "white")
    prompt_len = len(OcrCollator(processor, "x").encode(image, "")["input_ids"]) - 1
    collator = OcrCollator(processor, "x", max_length=prompt_len + 3)
    out = collator([{"image": image, "text": "abcdefgh"}])
    assert out["input_ids"].shape[1] == prompt_len + 3
    with pytest.raises(GemmaOcrError, match="max_seq_length 5 is shorter than the prompt"):
        OcrCollator(processor, "x", max_length=5)([{"image": image, "text": "a"}])
