"""Small matplotlib helpers shared by the reports: saving a figure, fonts that can draw the data's scripts.

Loads matplotlib: a module that a light command or ``--help`` imports, imports this one only when it draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib import font_manager

from gemma_ocr.data.fonts import cjk_font, khmer_font


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG (110 dpi, tight bounding box) and close it."""
    with warnings.catch_warnings():  # a crowded figure cannot be tightened; bbox_inches="tight" still keeps all labels
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _is_khmer(ch: str) -> bool:
    return "\u1780" <= ch <= "\u17ff"


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef"


def use_font_for(text: str, artists: Iterable[Any]) -> None:
    """Let text artists draw ``text``'s Khmer and CJK characters (with the fonts that are installed).

    Each script's font is tried in turn, then matplotlib's own DejaVu Sans, so Latin letters and symbols
    (arrows, ∅) that a script's font lacks still have glyphs.
    """
    paths = [find() for wanted, find in ((_is_khmer, khmer_font), (_is_cjk, cjk_font)) if any(map(wanted, text))]
    families = []
    for path in filter(None, paths):
        font_manager.fontManager.addfont(str(path))
        families.append(font_manager.FontProperties(fname=str(path)).get_name())
    if not families:
        return
    for artist in artists:
        artist.set_fontfamily([*families, "DejaVu Sans"])  # DejaVu Sans ships with matplotlib
