"""Model presets: output shapes, parameter counts near the reference figures, clear errors."""

from __future__ import annotations

import pytest
import torch

from gemma_ocr.errors import ModelCreationError
from gemma_ocr.khmer_digits.models import DEFAULT_PRESET, PRESETS, count_parameters, create_model

# Reference parameter counts (millions) and the tolerance allowed.
REFERENCE = {"small": (12.5, 0.05), "medium": (16.2, 0.05), "ctc": (12.3, 0.05), "large": (30.0, 0.1)}


@pytest.mark.parametrize("preset", ["lite", "small", "medium", "large", "ctc", "ctc_medium"])
def test_forward_shapes(preset):
    model = create_model(preset=preset, vocab_size=13, max_sequence_length=9).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 128))
    if PRESETS[preset]["head"] == "ctc":
        assert model.is_ctc
        # enough frames for 8 digits with a blank between every repeated pair
        assert out.shape[0] == 2 and out.shape[1] >= 15 and out.shape[2] == 13
    else:
        assert not model.is_ctc
        assert out.shape == (2, 9, 13)
    strings = model.predict(torch.randn(3, 1, 32, 128))
    assert len(strings) == 3 and all(isinstance(s, str) and len(s) <= out.shape[1] for s in strings)
    millions = count_parameters(model) / 1e6
    if preset in REFERENCE:
        ref, tol = REFERENCE[preset]
        assert abs(millions - ref) <= ref * tol, (preset, millions)
        if preset == "large":
            assert millions >= 30.0


def test_default_preset_is_small_and_ctc():
    model = create_model()
    assert model.config["preset"] == DEFAULT_PRESET and model.is_ctc
    assert count_parameters(model) < 2_000_000


def test_unknown_preset_and_bad_option():
    with pytest.raises(ModelCreationError, match="unknown model preset 'huge'"):
        create_model("huge")
    with pytest.raises(ModelCreationError, match="bad option"):
        create_model("lite", not_an_option=1)
