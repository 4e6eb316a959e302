"""The shipped tiny reader: it reads, it loads like a hub checkpoint from a fresh clone, and its build is recorded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest
import torch

from tests.helpers.programs import REPO
from tests.modeling.test_tiny_model import HUB_PREFIXES, saved_weight_names

READER = REPO / "models/tiny-gemma3-reader"


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The reader's files as a fresh clone has them: only what git tracks."""
    tracked = subprocess.run(["git", "ls-files", "models/tiny-gemma3-reader"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    out = tmp_path_factory.mktemp("clone") / "tiny-gemma3-reader"
    out.mkdir()
    for name in tracked:
        shutil.copy2(REPO / name, out / (REPO / name).name)
    return out


def test_every_file_of_the_reader_is_tracked_and_small(fresh_copy):
    from gemma_ocr.modeling.reader import CARD_FILE, CHECKPOINT_FILES

    names = {p.name for p in fresh_copy.iterdir()}
    assert set(CHECKPOINT_FILES) | {CARD_FILE, "README.md"} <= names, names
    assert sum(p.stat().st_size for p in fresh_copy.iterdir()) < 4 * 2**20


def test_reader_loads_with_the_auto_classes_and_the_hub_weight_names(fresh_copy):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert all(n.startswith(HUB_PREFIXES) for n in saved_weight_names(fresh_copy))
    model, info = AutoModelForImageTextToText.from_pretrained(fresh_copy, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(fresh_copy)
    assert type(processor).__name__ == "Gemma3Processor"
    vocab = processor.tokenizer.get_vocab()
    assert all("\n" * n in vocab for n in (1, 2, 3, 4))
    config = json.loads((fresh_copy / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"] and config["mm_tokens_per_image"] == 64


@pytest.mark.slow
def test_reader_reads_lines_it_has_never_seen(fresh_copy):
    """CER <= 0.10 on 200 lines of its pretraining distribution rendered with a seed it was not trained on."""
    from transformers import AutoModelForImageTextToText

    from gemma_ocr.data.images import open_image
    from gemma_ocr.data.synthetic import READER_PRETRAINING, generate_dataset
    from gemma_ocr.scoring.metrics import aggregate, score_pairs
    from gemma_ocr.modeling.loading import load_processor
    from gemma_ocr.modeling.reader import read_lines

    card = json.loads((fresh_copy / "reader.json").read_text())
    seed = 1234
    assert seed not in (card["pretraining_data"]["seed"], card["heldout_data"]["seed"])
    records = generate_dataset(fresh_copy.parent / "unseen", dataclasses.replace(READER_PRETRAINING, n_samples=200,
                                                                                  seed=seed))
    torch.set_num_threads(1)
    model = AutoModelForImageTextToText.from_pretrained(fresh_copy, dtype=torch.float32)
    predictions = read_lines(model, load_processor(str(fresh_copy)), [open_image(r.image_path) for r in records])
    cer = aggregate(score_pairs(predictions, [r.text for r in records])).overall_cer
    assert cer <= 0.10, (cer, list(zip(predictions, [r.text for r in records]))[:10])
    assert len(set(predictions)) > 190  # it reads each line, it does not answer one thing


def test_reader_card_states_how_it_was_built(fresh_copy):
    card = json.loads((fresh_copy / "reader.json").read_text())
    assert card["command"] == "python core/make_tiny_model.py --pretrain"
    assert card["heldout_cer"] <= card["target_cer"] == 0.10
    assert [c["train_mode"] for c in card["train_configs"]] == ["full", "full"] and card["recipe"]["threads"] == 1
    assert card["pretraining_data"]["scripts"] == ["digits"] and card["pretraining_data"]["font"] is None
    import hashlib

    assert hashlib.sha256((fresh_copy / "model.safetensors").read_bytes()).hexdigest() == card["weights_sha256"]
    assert str(card["heldout_cer"]) in (fresh_copy / "README.md").read_text()


def test_pretraining_below_its_target_fails_and_writes_nothing(tmp_path):
    """A short build misses its CER target: one error line naming the target, and the output folder never appears."""
    from tests.helpers.programs import assert_one_line_error, run_cli

    out = tmp_path / "reader"
    proc = run_cli("make_tiny_model.py", "--pretrain", "--output-dir", str(out), "--lines", "40", "--max-steps", "2", "--anneal-steps", "0",
                   "--curve-every", "0", "--work-dir", str(tmp_path / "work"), check=False, timeout=300,
                   env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc, "held-out lines, above its target 0.1", "nothing written to")
    assert not out.exists() and (tmp_path / "work/train/model.safetensors").is_file()
