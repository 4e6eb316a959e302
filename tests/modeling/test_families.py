"""The model family registry: the family comes from the config's model_type; anything else is one line."""

from __future__ import annotations

import json

import pytest

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.modeling.families import FAMILIES, GEMMA3, GEMMA4, family_named, family_of, family_of_processor
from tests.helpers.sft_fixtures import tiny_gemma4_dir, tiny_model_dir  # noqa: F401


def test_family_from_a_checkpoint_folder_a_config_dict_and_a_config_object(tiny_model_dir, tiny_gemma4_dir):  # noqa: F811
    from transformers import AutoConfig

    assert family_of(str(tiny_model_dir)) is GEMMA3 and family_of(tiny_gemma4_dir) is GEMMA4
    assert family_of(json.loads((tiny_gemma4_dir / "config.json").read_text())) is GEMMA4
    assert family_of(AutoConfig.from_pretrained(tiny_gemma4_dir)) is GEMMA4
    assert family_of(AutoConfig.from_pretrained(tiny_model_dir)) is GEMMA3


def test_the_folder_name_does_not_decide(tiny_gemma4_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "gemma-3-4b-it"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_gemma4_dir / "config.json").read_text())
    assert family_of(folder) is GEMMA4


@pytest.mark.parametrize("model_type, expected", [
    ("gemma3n", "Gemma 3n needs timm's MobileNet vision tower and is not supported"),
    ("gemma3_text", "a text-only Gemma 3"),
    ("gemma4_text", "a text-only Gemma 4"),
    ("llama", "model_type 'llama'"),
])
def test_unsupported_model_types_are_one_line(model_type, expected, tmp_path):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "vision_config": {}}))
    with pytest.raises(GemmaOcrError) as err:
        family_of(folder)
    message = str(err.value)
    assert "\n" not in message and f"model_type {model_type!r}" in message and expected in message
    assert "supported families: gemma3" in message and "gemma4" in message


def test_a_gemma3_config_without_a_vision_tower_is_refused():
    with pytest.raises(GemmaOcrError, match="model_type 'gemma3'.*no vision tower"):
        family_of({"model_type": "gemma3"})


def test_each_family_names_its_classes_markers_and_keys():
    assert [f.name for f in FAMILIES] == ["gemma3", "gemma4"] and family_named("gemma4") is GEMMA4
    assert (GEMMA3.architecture, GEMMA3.processor_class, GEMMA3.end_of_turn, GEMMA3.batch_keys) == (
        "Gemma3ForConditionalGeneration", "Gemma3Processor", "<end_of_turn>", ("token_type_ids",))
    assert (GEMMA4.architecture, GEMMA4.processor_class, GEMMA4.end_of_turn, GEMMA4.batch_keys) == (
        "Gemma4ForConditionalGeneration", "Gemma4Processor", "<turn|>", ("mm_token_type_ids", "image_position_ids"))
    assert GEMMA4.budget_values == (70, 140, 280, 560, 1120) and GEMMA4.budget_kwargs(140) == {"max_soft_tokens": 140}
    assert GEMMA3.budget_kwargs(None) == {} and GEMMA4.budget_kwargs(None) == {}
    with pytest.raises(GemmaOcrError, match="a Gemma 3 model has no image-token budget"):
        GEMMA3.budget_kwargs(280)
    with pytest.raises(GemmaOcrError, match="takes one of 70, 140, 280, 560, 1120"):
        GEMMA4.budget_kwargs(100)
    with pytest.raises(GemmaOcrError, match="unknown model family 'gemma3n'"):
        family_named("gemma3n")


def test_lora_regexes_reach_the_inner_linear_of_gemma4_vision_projections():
    import re

    vision = GEMMA4.vision_regex(("q_proj",))
    assert re.fullmatch(vision, "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear")
    assert not re.fullmatch(vision, "model.vision_tower.encoder.layers.0.self_attn.q_proj")
    gemma3 = GEMMA3.vision_regex(("out_proj",))
    assert re.fullmatch(gemma3, "model.vision_tower.vision_model.encoder.layers.0.self_attn.out_proj")
    with pytest.raises(GemmaOcrError, match=r"\['fc1'\] are not modules of a Gemma 4 model; it has language: q_proj"):
        GEMMA4.explicit_lora_regex(["q_proj", "fc1"])


def test_family_of_a_processor(tiny_gemma4_dir):  # noqa: F811
    from transformers import AutoProcessor

    assert family_of_processor(AutoProcessor.from_pretrained(tiny_gemma4_dir)) is GEMMA4
    with pytest.raises(GemmaOcrError, match="processor object is not one of a supported family"):
        family_of_processor(object())
