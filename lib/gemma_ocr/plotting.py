"""Small matplotlib helpers shared by the reports: fonts that can draw the data's scripts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def use_font_for(text: str, artists: Iterable[Any]) -> None:
    """Give text artists a font that has glyphs for ``text`` (Khmer or CJK) when one is installed."""
    from matplotlib.font_manager import FontProperties

    from gemma_ocr.data.fonts import cjk_font, khmer_font

    path = None
    if any("\u1780" <= ch <= "\u17ff" for ch in text):
        path = khmer_font()
    elif any("\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" for ch in text):
        path = cjk_font()
    if path is None:
        return
    prop = FontProperties(fname=str(path))
    for artist in artists:
        artist.set_fontproperties(prop)
