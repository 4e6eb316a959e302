"""The dataset that reads ``metadata.yaml``, image preprocessing and train/val transforms.

Every image goes through :func:`fit_image` (grayscale, height scaled to the model's input height
keeping the aspect ratio, then squeezed or right-padded with its own background to the input
width), so generated images and real OCR crops of any size feed the same model. Training adds
random affine jitter, contrast/brightness changes, blur and noise; validation does not.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset

from gemma_ocr.data.images import upright_rgb
from gemma_ocr.errors import DataLoaderError
from gemma_ocr.khmer_digits.generator import split_records
from gemma_ocr.khmer_digits.vocab import MAX_SEQUENCE_LENGTH, encode

log = logging.getLogger(__name__)

IMAGE_HEIGHT, IMAGE_WIDTH = 32, 128


def _background(gray: Image.Image) -> int:
    arr = np.asarray(gray)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return int(np.median(border))


def fit_image(image: Image.Image, height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> Image.Image:
    """Grayscale ``height x width``: keep the aspect ratio, squeeze if too wide, pad right with background."""
    gray = image.convert("L")
    if gray.size == (width, height):
        return gray
    w, h = gray.size
    new_w = max(1, round(w * height / max(h, 1)))
    if new_w >= width:
        return gray.resize((width, height), Image.BILINEAR)
    scaled = gray.resize((new_w, height), Image.BILINEAR)
    canvas = Image.new("L", (width, height), color=_background(gray))
    canvas.paste(scaled, (0, 0))
    return canvas


def to_tensor(gray: Image.Image | np.ndarray) -> torch.Tensor:
    """``(1, H, W)`` float tensor scaled to [-1, 1]."""
    arr = np.asarray(gray, dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).unsqueeze(0)


class ValTransform:
    """Deterministic preprocessing: fit to the input size, scale to [-1, 1]."""

    def __init__(self, height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH):
        self.height, self.width = height, width

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(fit_image(image, self.height, self.width))


class TrainTransform(ValTransform):
    """Preprocessing plus random augmentation (small shifts, scale, rotation, contrast, blur, noise)."""

    def __init__(self, height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH, strength: float = 1.0):
        super().__init__(height, width)
        self.strength = strength

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # here, not at the top: torchvision takes seconds to import, and only the training augmentation needs it
        import torchvision.transforms.functional as TF

        rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))  # follows torch's seed
        s = self.strength
        gray = fit_image(image, self.height, self.width)
        if rng.random() < 0.7:
            gray = TF.affine(
                gray,
                angle=rng.uniform(-2.0, 2.0) * s,
                translate=[round(rng.uniform(-0.02, 0.02) * s * self.width), round(rng.uniform(-0.08, 0.08) * s * self.height)],
                scale=1.0 + rng.uniform(-0.08, 0.02) * s,
                shear=[rng.uniform(-5.0, 5.0) * s],
                fill=_background(gray),
                interpolation=TF.InterpolationMode.BILINEAR,
            )
        if rng.random() < 0.2:
            gray = gray.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8)))
        arr = np.asarray(gray, dtype=np.float32)
        if rng.random() < 0.5:  # contrast and brightness
            mean = arr.mean()
            arr = (arr - mean) * rng.uniform(1 - 0.3 * s, 1 + 0.2 * s) + mean + rng.uniform(-20, 20) * s
        if rng.random() < 0.3:
            arr = arr + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(1, 8) * s, arr.shape)
        if rng.random() < 0.1:  # light text on dark background
            arr = 255.0 - arr
        return to_tensor(np.clip(arr, 0, 255))


def get_train_transforms(height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> TrainTransform:
    return TrainTransform(height, width)


def get_val_transforms(height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> ValTransform:
    return ValTransform(height, width)


class KhmerDigitsDataset(Dataset):
    """One split of a generated dataset: items are ``(image (1,H,W), target (max_sequence_length,))``.

    ``cache=True`` keeps the decoded, size-fitted images in memory after their first use, so
    later epochs read no files.
    """

    def __init__(
        self,
        metadata_path: str | Path,
        split: str = "train",
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        cache: bool = True,
        max_samples: int | None = None,
    ):
        self.metadata_path = Path(metadata_path)
        self.split = split
        records = split_records(metadata_path, split)
        if max_samples is not None:
            records = records[:max_samples]
        if not records:
            raise DataLoaderError(f"{metadata_path}: split {split!r} has no samples (generate more data)")
        self.image_paths = [r.image_path for r in records]
        self.labels = [r.text for r in records]
        self.transform = transform or get_val_transforms()
        self.targets = torch.tensor([encode(t, max_sequence_length) for t in self.labels], dtype=torch.long)
        self.cache = cache
        self._images: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, index: int) -> Image.Image:
        image = self._images.get(index)
        if image is None:
            path = self.image_paths[index]
            try:
                with Image.open(path) as im:
                    image = upright_rgb(im).convert("L")  # the rule prediction uses (gemma_ocr.data.images)
            except FileNotFoundError:
                raise DataLoaderError(f"{self.metadata_path}: image not found: {path} (regenerate the data)") from None
            except OSError as e:
                raise DataLoaderError(f"{self.metadata_path}: image cannot be read: {path} ({e})") from None
            if self.cache:
                self._images[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self._image(index)), self.targets[index]


def create_data_loaders(
    metadata_path: str | Path,
    batch_size: int = 32,
    num_workers: int = 0,
    pin_memory: bool = False,
    augmentation: bool = True,
    train_split: str = "train",
    val_split: str = "val",
    image_height: int = IMAGE_HEIGHT,
    image_width: int = IMAGE_WIDTH,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    max_train_samples: int | None = None,
    seed: int = 42,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (augmented when ``augmentation``) and an ordered validation loader."""
    train_tf = get_train_transforms(image_height, image_width) if augmentation else get_val_transforms(image_height, image_width)
    train = KhmerDigitsDataset(metadata_path, train_split, train_tf, max_sequence_length, max_samples=max_train_samples)
    val = KhmerDigitsDataset(metadata_path, val_split, get_val_transforms(image_height, image_width), max_sequence_length)
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) > batch_size, generator=generator, **kwargs)
    val_loader = DataLoader(val, batch_size=max(batch_size, 64), shuffle=False, **kwargs)
    log.info("data: %d train (%d batches), %d val samples from %s", len(train), math.ceil(len(train) / batch_size), len(val), metadata_path)
    return train_loader, val_loader
