"""The settings of evaluation and transcription: what reads the images, which servers, how hard to try.

:class:`RequestConfig` is shared by evaluate.py and transcribe.py (its fields are their flags); :class:`EvalConfig`
adds what to evaluate and how it is scored. :func:`check_settings` refuses settings that cannot work in one line
naming the calling program's flag.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from gemma_ocr.data.images import MAX_IMAGE_PIXELS
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.engines import EngineConfig
from gemma_ocr.layout import LAYOUT
from gemma_ocr.scoring.results import ScoringConfig
from gemma_ocr.settings import FieldError
from gemma_ocr.training.config import DEFAULT_INSTRUCTION

DEFAULT_URL = "http://localhost:8000/v1/chat/completions"
DEFAULT_MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# How evaluate.py and transcribe.py spell a setting whose flag is not ``--`` + its name with dashes.
REQUEST_FLAGS = {"urls": "--vllm-url", "resume": "--no-resume"}


@dataclass
class RequestConfig(EngineConfig):
    """What reads the images (a served model or a local engine), which server(s) to ask and how hard to try
    (evaluation and transcription alike). Fields are the flags."""

    urls: Sequence[str] = field(default=(DEFAULT_URL,), metadata={
        "aliases": ["--vllm-url"], "metavar": "URL",
        "help": "server URL(s): http://host:port, .../v1 or .../v1/chat/completions; several share the load"})
    workers: int = field(default=4, metadata={"help": "parallel requests"})
    model_name: str | None = field(default=None, metadata={
        "help": "served model name (null: the one model the server lists)"})
    save_interval: int = field(default=50, metadata={"help": "save the output file every N finished images"})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "text sent with each image"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per request"})
    max_retries: int = field(default=3, metadata={
        "help": "extra attempts of a request after connection errors, timeouts, 408/429/5xx"})
    max_tokens: int = field(default=512, metadata={"help": "longest answer in tokens"})
    logprobs: bool = field(default=True, metadata={
        "help": "ask for token log-probabilities (each answer's confidence: mean and minimum); a server that "
                "refuses them is asked without"})
    retry_temperature: float | None = field(default=None, metadata={
        "help": "ask once more at this temperature for an answer cut at max_tokens or caught in a repetition "
                "loop, and keep the retry if it is neither (None: no retry)"})
    resume: bool = field(default=True, metadata={"help": "resume an existing output file (--no-resume starts over)"})
    wait_server: float | None = field(default=None, metadata={
        "help": "seconds to wait for a server that is starting: nothing listening yet, or /health not yet 200 (None: "
                "a server that refuses connections is reported at once, one that answers but is not ready is "
                "waited for up to 10 s)"})
    backoff_base: float = field(default=0.5, metadata={"help": "first retry delay in seconds (doubles per retry)"})
    backoff_max: float = field(default=30.0, metadata={"help": "longest retry delay in seconds"})
    show_progress: bool = field(default=True, metadata={"aliases": ["--progress"],
                                                        "help": "progress bar (--no-progress: none)"})
    max_image_pixels: int | None = field(default=DEFAULT_MAX_IMAGE_PIXELS, metadata={
        "help": "an image with more pixels is that sample's error (a guard against decompression bombs; "
                "Pillow's limit by default; None: no limit)"})
    # The calling program's flag for each setting its errors may name, e.g. {"resume": "--force", "top_k":
    # "--eval-top-k"}: settings left out have no flag there. None: the flags of evaluate.py and transcribe.py.
    # Not a flag itself: set it after construction (cfg.flags = {...}).
    flags: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def flag(self, name: str) -> str:
        """The calling program's flag for setting ``name`` ("" when it has none)."""
        if self.flags is not None:
            return self.flags.get(name, "")
        return REQUEST_FLAGS.get(name) or "--" + name.replace("_", "-")

    def start_over_hint(self) -> str:
        """What to do when an existing output file cannot be resumed."""
        options = [f"choose another {self.flag('output_file')}" if self.flag("output_file") else "",
                   f"pass {self.flag('resume')} to start it over" if self.flag("resume") else ""]
        return " or ".join(o for o in options if o) or "move the file away"

    def validate(self) -> None:
        """Refuse settings that cannot work, before any server is asked (the settings layer names the flag
        or file key that set them; :func:`check_settings` names the calling program's flag)."""
        def refuse(name: str, why: str) -> FieldError:
            return FieldError(name, f"{why}, got {getattr(self, name)!r}")

        super().validate()
        if not self.urls:
            raise FieldError("urls", "needs at least one server URL")
        for name in ("workers", "save_interval", "max_tokens"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise refuse(name, "must be a whole number >= 1")
        if self.max_retries < 0:
            raise refuse("max_retries", "must be >= 0")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise refuse("timeout", "must be a number of seconds > 0")
        if self.wait_server is not None and not (math.isfinite(self.wait_server) and self.wait_server >= 0):
            raise refuse("wait_server", "must be a number of seconds >= 0, or None")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise refuse("max_image_pixels", "must be a pixel count >= 1, or None for no limit")
        if self.retry_temperature is not None and not (math.isfinite(self.retry_temperature)
                                                       and 0 < self.retry_temperature <= 2):
            raise refuse("retry_temperature", "must be a temperature above 0 and at most 2, or None for no retry")


def check_settings(cfg: RequestConfig) -> None:
    """:meth:`RequestConfig.validate` as one line naming the calling program's flag (or the setting)."""
    try:
        cfg.validate()
    except FieldError as e:
        raise GemmaOcrError(f"{cfg.flag(e.name) or f'setting {e.name!r}'} {e.why}") from None


@dataclass
class EvalConfig(RequestConfig, ScoringConfig):
    """What to evaluate, where the results go, how it is scored, and the server settings."""

    data_file: str | os.PathLike[str] = field(default=str(LAYOUT.test_json), metadata={
        "help": "[{image_path, ocr_text}] JSON"})
    output_file: str | os.PathLike[str] = field(default=str(LAYOUT.evaluation), metadata={
        "help": "results JSON (resumed if it exists)"})
    top_k: int | None = field(default=100, metadata={"help": "evaluate the first K samples; None for all"})

    def validate(self) -> None:
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise FieldError("top_k", f"must be a positive number or None, got {self.top_k}")
        super().validate()
        ScoringConfig.validate(self)
