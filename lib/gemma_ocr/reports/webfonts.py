"""Fonts for the HTML reports: subsets of the project's fonts, embedded in the page.

A report shows references and predictions in Khmer, Chinese and anything a model may answer; few systems
have a Khmer font, so a page that relies on them draws empty boxes. :func:`font_faces` takes the characters
a page shows and embeds, as ``@font-face`` data URLs, the glyphs of those characters from Noto Sans Khmer and
the CJK font the project renders with (:mod:`gemma_ocr.data.fonts`), with their shaping rules (Khmer
subscript consonants and vowel signs are glyph substitutions), and matplotlib's DejaVu Sans for what the
viewer's own fonts may lack (symbols such as ∅ ␣ ⏎). Only the glyphs used go in, static at regular weight: a few kilobytes to a few hundred.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from fontTools import subset
from fontTools.ttLib import TTFont
from fontTools.varLib.instancer import instantiateVariableFont

from gemma_ocr.data.fonts import cjk_font, khmer_font, missing_glyphs
from gemma_ocr.errors import GemmaOcrError

log = logging.getLogger(__name__)

KHMER_FAMILY, CJK_FAMILY, FALLBACK_FAMILY = "gemma-ocr Khmer", "gemma-ocr CJK", "gemma-ocr DejaVu Sans"
DOTTED_CIRCLE = "\u25cc"  # what a shaper draws under a combining mark that has no base


@dataclass(frozen=True)
class FontFaces:
    """The CSS of the embedded fonts, the font-family lists that use them, and what no font could draw."""

    css: str
    sans: str  # font-family value for running text
    mono: str  # font-family value for transcriptions (monospace first for Latin)
    missing: str  # characters none of the fonts has


def _is_khmer(ch: str) -> bool:
    return "\u1780" <= ch <= "\u17ff" or "\u19e0" <= ch <= "\u19ff"


def _is_cjk(ch: str) -> bool:  # CJK radicals, punctuation, kana, Hangul, ideographs, full-width forms and beyond
    return ch >= "\u2e80" and not _is_khmer(ch)


def _fonts() -> list[tuple[str, Callable[[], Path | None], Callable[[str], bool]]]:
    """(family, where its font is, which characters it is for): a script's font draws only that script."""
    return [(KHMER_FAMILY, khmer_font, _is_khmer), (CJK_FAMILY, cjk_font, _is_cjk),
            (FALLBACK_FAMILY, dejavu_sans, lambda ch: True)]


def dejavu_sans() -> Path:
    """DejaVu Sans, which ships with matplotlib: Latin, Greek, Cyrillic, arrows and the symbols reports use (∅ ␣ ⏎)."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@functools.lru_cache(maxsize=32)
def _subset(path: str, chars: str) -> bytes:
    """The TrueType/OpenType bytes of ``path`` cut down to ``chars`` (and what their shaping needs), at regular weight."""
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # its subsetter reports every table at INFO
    font = TTFont(path, fontNumber=0)  # a .ttc collection: its first face, as the plots use
    if "fvar" in font:  # a variable font: the regular instance only
        axes = {a.axisTag: (400 if a.axisTag == "wght" else 100 if a.axisTag == "wdth" else a.defaultValue)
                for a in font["fvar"].axes}
        axes = {tag: min(max(v, a.minValue), a.maxValue) for a in font["fvar"].axes for tag, v in axes.items()
                if tag == a.axisTag}
        font = instantiateVariableFont(font, axes)
    options = subset.Options()
    options.layout_features = ["*"]  # every shaping rule the glyphs take part in
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.drop_tables += ["DSIG", "FFTM"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[ord(c) for c in chars])
    subsetter.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


def font_faces(text: str) -> FontFaces:
    """Embedded fonts covering the characters of ``text``: Khmer and CJK from the project's fonts first (each only
    for its script), then the viewer's own fonts, then Noto Sans. A font that is not installed is left out (its
    characters are ``missing``)."""
    wanted = "".join(sorted({c for c in text if not c.isspace() and c.isprintable()}))
    left = wanted
    faces, used = [], []
    for family, find, meant_for in _fonts():
        mine = "".join(c for c in left if meant_for(c))
        if not mine:
            continue
        try:
            path = find()
        except GemmaOcrError as e:
            log.warning("report font left out: %s", e)
            continue
        if path is None:
            continue
        lacking = set(missing_glyphs(path, mine))
        covered = "".join(c for c in mine if c not in lacking)
        if not covered:
            continue
        if family == KHMER_FAMILY and DOTTED_CIRCLE not in lacking:
            covered += DOTTED_CIRCLE
        data = base64.b64encode(_subset(str(path), covered)).decode("ascii")
        faces.append(f"@font-face{{font-family:'{family}';src:url(data:font/ttf;base64,{data}) format('truetype');"
                     f"font-display:block}}")
        used.append(family)
        left = "".join(c for c in left if c not in covered)
    scripts = [f"'{f}'" for f in used if f != FALLBACK_FAMILY]
    latin = [f"'{FALLBACK_FAMILY}'"] if FALLBACK_FAMILY in used else []
    sans = ", ".join([*scripts, "system-ui", *latin, "sans-serif"])
    mono = ", ".join([*scripts, "ui-monospace", "'DejaVu Sans Mono'", "monospace", *latin])
    return FontFaces("".join(faces), sans, mono, left)
