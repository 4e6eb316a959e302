"""The system (Debian) packages some tests need: .ci/run installs them, a test never does.

``python tests/helpers/system_packages.py`` prints their names, one a line (what .ci/run installs).
"""

from __future__ import annotations

from collections.abc import Callable

SYSTEM_PACKAGES = {
    "postgresql": "a PostgreSQL server: the search workers' shared-storage tests",
    "fonts-wqy-microhei": "a CJK font: synthetic Chinese lines",
    "tesseract-ocr": "the Tesseract OCR engine: the tesseract backend of evaluation and transcription",
    "tesseract-ocr-eng": "Tesseract's English language data",
    "tesseract-ocr-khm": "Tesseract's Khmer language data",
    "chromium": "a headless browser: the error report's fonts and layout are checked as a browser draws them",
}


def missing_package(package: str, present: Callable[[], bool]) -> str:
    """'' when ``present()`` says the package's files are there, else the reason to skip the test that needs it."""
    assert package in SYSTEM_PACKAGES, f"list {package} in SYSTEM_PACKAGES so that .ci/run installs it"
    if present():
        return ""
    return (f"{package} ({SYSTEM_PACKAGES[package]}) is not installed: apt-get install {package}, "
            f"or run .ci/run, which installs the packages the tests need")


if __name__ == "__main__":
    print("\n".join(SYSTEM_PACKAGES))
