"""The Gemma 4 reader's recipe: its random start is one a tower trained from scratch can learn from, and a build
that misses its CER target fails in one line and writes nothing."""

from __future__ import annotations

import dataclasses

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from gemma_ocr.data.synthetic import READER_PRETRAINING, generate_dataset
from gemma_ocr.modeling.families import GEMMA4, family_of
from gemma_ocr.modeling.reader import GEMMA4_READER_ARCHITECTURE, READERS
from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4
from gemma_ocr.training.config import DEFAULT_INSTRUCTION
from gemma_ocr.training.data import OcrCollator
from tests.helpers.programs import assert_one_line_error, run_cli


def image_features(folder, records) -> torch.Tensor:
    """The soft image tokens of ``records`` as the model's language tower gets them, one row each."""
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    batch = OcrCollator(AutoProcessor.from_pretrained(folder), DEFAULT_INSTRUCTION)(
        [{"image_path": r.image_path, "text": r.text} for r in records])
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=batch["pixel_values"],
                                                  image_position_ids=batch["image_position_ids"]).pooler_output
    return torch.cat(list(features), 0) if isinstance(features, (list, tuple)) else features.flatten(0, -2)


def varying_share(features: torch.Tensor) -> float:
    """How much of the features' energy differs from token to token (0: every token the same vector)."""
    return float((features - features.mean(0)).pow(2).mean() / features.pow(2).mean())


def test_the_reader_start_sees_the_pixels_where_the_default_start_does_not(tmp_path):
    """transformers' all-ones position table makes every image token nearly the same vector at the start."""
    torch.set_num_threads(1)
    records = generate_dataset(tmp_path / "lines", dataclasses.replace(READER_PRETRAINING, n_samples=8, seed=7))
    size = {k: v for k, v in GEMMA4_READER_ARCHITECTURE.items() if k != "from_scratch"}
    default = varying_share(image_features(build_tiny_gemma4(tmp_path / "default", **size), records))
    scratch_dir = build_tiny_gemma4(tmp_path / "scratch", **size, from_scratch=True)
    scratch = varying_share(image_features(scratch_dir, records))
    assert default < 0.01 and scratch > 0.05, (default, scratch)
    model = AutoModelForImageTextToText.from_pretrained(scratch_dir)
    norms = {n: p for n, p in model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))}
    assert norms and all(torch.allclose(p, torch.full_like(p, p.numel() ** -0.25)) for p in norms.values())


def test_the_gemma4_reader_goes_to_its_own_folder():
    assert READERS["gemma4"][2].name == "tiny-gemma4-reader" and READERS["gemma3"][2].name == "tiny-gemma3-reader"


def test_gemma4_pretraining_below_its_target_fails_and_writes_nothing(tmp_path):
    """A short Gemma 4 build misses its CER target: one error line, and the output folder never appears."""
    out = tmp_path / "reader"
    proc = run_cli("make_tiny_model.py", "--pretrain", "--family", "gemma4", "--output-dir", str(out), "--lines", "40", "--heldout-lines", "8",
                   "--max-steps", "2", "--anneal-steps", "0", "--curve-every", "0", "--work-dir", str(tmp_path / "work"),
                   check=False, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc, "held-out lines, above its target 0.1", "nothing written to")
    assert not out.exists() and family_of(str(tmp_path / "work/train")) is GEMMA4
