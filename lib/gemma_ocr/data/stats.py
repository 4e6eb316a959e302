"""Statistics and plots of OCR data splits and of empty predictions in results files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gemma_ocr.data.records import OcrRecord
from gemma_ocr.scoring.results import STATUS_ERROR, sample_status


@dataclass
class SplitStats:
    name: str
    n: int
    label_lengths: list[int]
    image_sizes: list[tuple[int, int]]
    char_counts: Counter
    unreadable: list[str]

    def summary(self) -> dict[str, Any]:
        lengths = np.array(self.label_lengths or [0])
        widths = np.array([w for w, _ in self.image_sizes] or [0])
        heights = np.array([h for _, h in self.image_sizes] or [0])
        return {
            "split": self.name,
            "samples": self.n,
            "empty_labels": int(sum(1 for x in self.label_lengths if x == 0)),
            "label_length": {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max()),
                             "median": float(np.median(lengths))},
            "image_width": {"mean": float(widths.mean()), "min": int(widths.min()), "max": int(widths.max())},
            "image_height": {"mean": float(heights.mean()), "min": int(heights.min()), "max": int(heights.max())},
            "distinct_chars": len(self.char_counts),
            "top_chars": self.char_counts.most_common(20),
            "unreadable_images": self.unreadable,
        }


def split_stats(name: str, records: list[OcrRecord]) -> SplitStats:
    """Label lengths, character counts and image sizes (read from headers only) of one split."""
    sizes, unreadable = [], []
    for r in records:
        try:
            with Image.open(r.image_path) as im:
                sizes.append(im.size)
        except OSError:
            unreadable.append(r.image_path)
    chars = Counter(ch for r in records for ch in r.text if not ch.isspace())
    return SplitStats(name, len(records), [len(r.text) for r in records], sizes, chars, unreadable)


def plot_splits(stats: list[SplitStats], out_dir: str | Path) -> list[Path]:
    """Save label-length, image-size and character-frequency plots as PNG; return their paths."""
    # matplotlib is heavy: loaded only when plots are drawn (the data-stats command's start-up and --help)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"): no display needed

    from gemma_ocr.reports.plotting import use_font_for  # loads matplotlib too: only when plots are drawn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in stats:
        ax.hist(s.label_lengths, bins=30, alpha=0.6, label=f"{s.name} (n={s.n})")
    ax.set(title="Label length (characters)", xlabel="characters", ylabel="samples")
    ax.legend()
    paths.append(out_dir / "label_lengths.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in stats:
        if s.image_sizes:
            ax.scatter(*zip(*s.image_sizes), s=8, alpha=0.5, label=s.name)
    ax.set(title="Image sizes", xlabel="width (px)", ylabel="height (px)")
    ax.legend()
    paths.append(out_dir / "image_sizes.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(len(stats), 1, figsize=(10, 3.2 * len(stats)), squeeze=False)
    for ax, s in zip(axes[:, 0], stats):
        top = s.char_counts.most_common(40)
        if top:
            chars, counts = zip(*top)
            ax.bar(range(len(chars)), counts)
            ax.set_xticks(range(len(chars)))
            ax.set_xticklabels(chars)
            use_font_for("".join(chars), ax.get_xticklabels())
        ax.set(title=f"Most frequent characters: {s.name}", ylabel="count")
    fig.tight_layout()
    paths.append(out_dir / "char_frequency.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def empty_predictions(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Samples whose prediction is empty or whitespace (failed requests excluded)."""
    return [s for s in document.get("samples", [])
            if sample_status(s) != STATUS_ERROR and not (s.get("prediction") or "").strip()]
