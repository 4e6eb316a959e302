"""Generator determinism, label/image agreement, the dataset and its transforms, OCR JSON export."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tests.helpers.khmer_helpers import tiny_dataset
from PIL import Image

from gemma_ocr.data.records import load_records
from gemma_ocr.khmer_digits.dataset import KhmerDigitsDataset, fit_image, get_train_transforms, get_val_transforms
from gemma_ocr.errors import DataLoaderError
from gemma_ocr.khmer_digits.generator import GeneratorConfig, Renderer, export_ocr_json, generate_samples, load_metadata, random_label
from gemma_ocr.khmer_digits.vocab import DIGITS, EOS_IDX, PAD_IDX, decode, encode
from gemma_ocr.settings import FieldError


@pytest.fixture(scope="module")
def dataset_meta(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("khmer_data"))


def test_same_seed_same_images_and_labels(tmp_path):
    a = tiny_dataset(tmp_path / "a", n_train=12, n_val=4, seed=3)
    b = tiny_dataset(tmp_path / "b", n_train=12, n_val=4, seed=3)
    c = tiny_dataset(tmp_path / "c", n_train=12, n_val=4, seed=4)
    ma, mb, mc = load_metadata(a), load_metadata(b), load_metadata(c)
    assert [s["label"] for s in ma["train"]["samples"]] == [s["label"] for s in mb["train"]["samples"]]
    assert [s["label"] for s in ma["train"]["samples"]] != [s["label"] for s in mc["train"]["samples"]]
    for s in ma["train"]["samples"]:
        assert (a.parent / s["image_path"]).read_bytes() == (b.parent / s["image_path"]).read_bytes()
    # train and val are different draws
    assert [s["label"] for s in ma["val"]["samples"]] != [s["label"] for s in ma["train"]["samples"][:4]]


def test_labels_are_1_to_8_khmer_digits(dataset_meta):
    meta = load_metadata(dataset_meta)
    labels = [s["label"] for s in meta["train"]["samples"] + meta["val"]["samples"]]
    assert all(1 <= len(t) <= 8 and set(t) <= set(DIGITS) for t in labels)
    assert meta["train"]["num_samples"] == 48 and meta["val"]["num_samples"] == 16
    with Image.open(dataset_meta.parent / meta["train"]["samples"][0]["image_path"]) as im:
        assert im.size == (128, 32) and im.mode == "L"


def test_image_shows_as_many_glyphs_as_the_label_has_digits():
    """On clean renders each Khmer digit is one run of inked columns, so runs == digits."""
    config = GeneratorConfig(min_font_size=22, max_font_size=22, rotation=0, blur=0, noise=0, vary_weight=False)
    renderer, rng = Renderer(config), random.Random(11)
    for _ in range(60):
        label = random_label(rng, config)
        image = np.asarray(renderer.render(label, rng), dtype=np.float32)
        ink = (np.abs(image - np.median(image)) > 60).any(axis=0)
        runs = int(ink[0]) + int(((~ink[:-1]) & ink[1:]).sum())
        assert runs == len(label), label


def test_generate_samples_is_deterministic():
    config = GeneratorConfig()
    a, b = generate_samples(5, config, seed=1), generate_samples(5, config, seed=1)
    assert [t for t, _ in a] == [t for t, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a, b))


def test_dataset_items_and_targets(dataset_meta):
    ds = KhmerDigitsDataset(dataset_meta, "val")
    image, target = ds[0]
    assert image.shape == (1, 32, 128) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert target.shape == (9,)
    assert decode(target.tolist()) == ds.labels[0]
    n = len(ds.labels[0])
    assert target[n] == EOS_IDX and (target[n + 1:] == PAD_IDX).all()


def test_augmentation_only_on_train(dataset_meta):
    train = KhmerDigitsDataset(dataset_meta, "train", get_train_transforms())
    val = KhmerDigitsDataset(dataset_meta, "train", get_val_transforms())
    torch.manual_seed(0)
    assert torch.equal(val[1][0], val[1][0])
    draws = [train[1][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert draws[0].shape == val[1][0].shape


def test_fit_image_keeps_aspect_and_pads():
    wide = Image.new("RGB", (400, 50), "white")
    narrow = Image.new("RGB", (30, 64), (200, 200, 200))
    assert fit_image(wide).size == (128, 32)
    fitted = np.asarray(fit_image(narrow))
    assert fitted.shape == (32, 128) and (fitted[:, 20:] == 200).all()


def test_export_ocr_json_round_trip(dataset_meta, tmp_path):
    out = export_ocr_json(dataset_meta, tmp_path / "sub" / "ocr_val.json", split="val")
    records = load_records(out)
    meta = load_metadata(dataset_meta)
    assert [r.text for r in records] == [s["label"] for s in meta["val"]["samples"]]
    assert all(Image.open(r.image_path).size == (128, 32) for r in records[:3])


def test_data_errors_are_one_clear_line(tmp_path, dataset_meta):
    with pytest.raises(DataLoaderError, match="generate_data.py"):
        KhmerDigitsDataset(tmp_path / "missing" / "metadata.yaml", "train")
    with pytest.raises(DataLoaderError, match="no split 'test'"):
        KhmerDigitsDataset(dataset_meta, "test")
    with pytest.raises(DataLoaderError, match="not a Khmer digit"):
        encode("12")
    with pytest.raises(FieldError, match=r"'min_digits' must be in \[1, 8\], got 0"):
        GeneratorConfig(min_digits=0).validate()
