"""Real fonts for rendering synthetic text: Noto Sans, Noto Serif and Noto Sans Khmer ship as PyPI packages (fontpkg)."""

from __future__ import annotations

import functools
import glob
from pathlib import Path

from fontTools.ttLib import TTFont

from gemma_ocr.errors import GemmaOcrError

# Where a CJK font usually lies when the system has one (Debian's fonts-noto-cjk, fonts-wqy-*, macOS).
_CJK_GLOBS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/**/NotoSansCJK*.ttc",
    "/usr/share/fonts/**/NotoSans*CJK*.otf",
    "/usr/share/fonts/**/wqy-*.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)


def _fontpkg_path(family: str) -> Path:
    try:
        import fontpkg  # here, not at the top: an install without it gets the line below, not an ImportError
    except ImportError:
        raise GemmaOcrError("the fontpkg package is missing: pip install -e . (it brings the project's fonts)") from None
    try:
        return Path(fontpkg.path(family))
    except Exception:
        slug = family.lower().replace(" ", "-")
        raise GemmaOcrError(f"font {family!r} is not installed: pip install fontpkg-{slug}") from None


@functools.cache
def font_family(family: str) -> Path:
    """The regular face of an installed fontpkg font family, e.g. "Noto Serif"."""
    return _fontpkg_path(family)


def latin_font() -> Path:
    """Noto Sans: Latin, digits, punctuation."""
    return font_family("Noto Sans")


@functools.cache
def khmer_font() -> Path:
    """Noto Sans Khmer: Khmer script including the digits ០-៩."""
    return _fontpkg_path("Noto Sans Khmer")


@functools.cache
def cjk_font() -> Path | None:
    """A CJK font if the system has one installed, else None (Chinese lines are then skipped)."""
    for pattern in _CJK_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return Path(hits[0])
    return None


@functools.cache
def _codepoints(path: Path) -> frozenset[int]:
    try:
        font = TTFont(str(path), fontNumber=0, lazy=True)  # a .ttc collection: its first face, as PIL loads it
    except Exception as e:  # noqa: BLE001 - any unreadable font file is the same problem to the user
        raise GemmaOcrError(f"{path}: not a readable TrueType/OpenType font ({type(e).__name__})") from None
    try:
        return frozenset(font.getBestCmap() or {})
    finally:
        font.close()


def missing_glyphs(path: Path, text: str) -> str:
    """The characters of ``text`` (white space aside) that the font at ``path`` has no glyph for, in order."""
    have = _codepoints(path)
    return "".join(dict.fromkeys(c for c in text if not c.isspace() and ord(c) not in have))
