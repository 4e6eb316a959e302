"""Build a tiny Gemma 3 or Gemma 4 VLM checkpoint (real architecture, processor and chat template, hub weight layout).

--pretrain builds the shipped default model, the tiny reader, from random weights: it renders 10,000 lines
of 4-10 digits in Noto Sans, trains every weight (1 torch thread, deterministic), reads 200 held-out lines
rendered with another seed and writes the folder only if their CER is at most the target (about 8-15
CPU-minutes). --pretrain --family gemma4 builds the tiny Gemma 4 reader the same way. Without --pretrain it writes a random-weight model (a starting point, or "any Gemma 3"; with
--family gemma4 a random-weight tiny Gemma 4).
"""

from __future__ import annotations

import functools
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_ocr.outputs import OutputFolder
from gemma_ocr.data.records import load_records
from gemma_ocr.layout import LAYOUT
from gemma_ocr.modeling.reader import (CARD_FILE, CHECKPOINT_FILES, READER_ARCHITECTURE, READERS, ReaderRecipe,
                                       pretrain_reader)
from gemma_ocr.modeling.tiny import build_tiny_gemma3
from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4
from gemma_ocr.flags import ConfigParser
from gemma_ocr.settings import FieldError, Settings, setting

model = functools.partial(setting, group="the checkpoint")
random_weights = functools.partial(setting, group="random weights (without --pretrain)")


@dataclass
class TinyModelArguments(Settings):
    """What to build and where; the pretraining recipe is :class:`ReaderRecipe`."""

    pretrain: bool = model(False, "pretrain the tiny reader (the shipped default model)")
    output_dir: Path | None = model(None, f"folder for the checkpoint (null: {LAYOUT.reader} with --pretrain, "
                                          f"{READERS['gemma4'][2]} with --pretrain --family gemma4, else "
                                          f"{LAYOUT.random_model})")
    work_dir: Path | None = model(None, "with --pretrain: keep the data and the training run here (null: a "
                                        "temporary folder)")
    chars: str | None = random_weights(None, "extra characters to give their own tokens")
    chars_from: Path | None = random_weights(None, "an OCR data JSON file whose transcriptions add characters")
    image_size: int = random_weights(64, "square input size of the vision tower (gemma3)")
    family: Literal["gemma3", "gemma4"] = model("gemma3", "the model family (of the random model, or of the reader "
                                                          "--pretrain builds)")

    def validate(self) -> None:
        super().validate()
        self.at_least(8, "image_size")
        readers = {folder for _, _, folder in READERS.values()}
        if self.output_dir is not None and not self.pretrain and self.output_dir in readers:
            raise FieldError("output_dir", f"{self.output_dir} holds the shipped reader: a random model goes "
                                           "elsewhere (or rebuild the reader with --pretrain)")


def main() -> None:
    args, recipe, _ = ConfigParser([TinyModelArguments, ReaderRecipe], config_file=False,
                                   description=__doc__).parse_settings()
    out = Path(args.output_dir or (READERS[args.family][2] if args.pretrain else LAYOUT.random_model))
    folder = _output_folder(out, args)
    if args.pretrain:
        kept = _without_option(sys.argv[1:], ("--work-dir", "--work_dir"))  # where the run is kept does not change the result
        command = "python core/make_tiny_model.py " + shlex.join(kept)
        report = pretrain_reader(out, recipe, work_dir=args.work_dir, command=command, family=args.family)
        folder.record(p.name for p in out.iterdir())
        print(f"Wrote the tiny reader to {report.output_dir}: held-out CER {report.heldout_cer:.4f} on "
              f"{report.heldout_lines} lines (target <= {recipe.target_cer}), {report.cpu_seconds:.0f} CPU-s "
              f"({report.wall_seconds:.0f} s wall)")
        return
    chars = args.chars or ""
    if args.chars_from:
        chars += "".join(sorted({c for rec in load_records(args.chars_from) for c in rec.text}))
    if args.family == "gemma4":
        size = {k: READER_ARCHITECTURE[k] for k in ("patch_size", "hidden_size", "num_layers", "vision_hidden_size",
                                                     "vision_layers")}
        out = build_tiny_gemma4(out, chars=chars or None, seed=recipe.seed, **size)
    else:
        out = build_tiny_gemma3(out, chars=chars or None, seed=recipe.seed,
                                **dict(READER_ARCHITECTURE, image_size=args.image_size))
    folder.record(p.name for p in out.iterdir())
    print(f"Wrote a random-weight tiny {'Gemma 4' if args.family == 'gemma4' else 'Gemma 3'} to {out}")


def _output_folder(out: Path, args: TinyModelArguments) -> OutputFolder:
    """The checkpoint's folder, checked before any work: it is replaced as a whole, so it may hold only an earlier
    build's files (its manifest lists them; the shipped reader, kept without one, is known by its card and files)."""
    folder = OutputFolder(out, "--output-dir", "gemma-ocr tiny-model", overwrite_flag=None)
    reader_files = {*CHECKPOINT_FILES, CARD_FILE, "README.md"}
    if args.pretrain and (out / CARD_FILE).is_file() and {p.name for p in out.iterdir()} <= reader_files:
        return folder  # the reader an earlier --pretrain wrote
    folder.check_replace({"--chars-from": args.chars_from, "--work-dir": args.work_dir})
    return folder


def _without_option(argv: list[str], spellings: tuple[str, ...]) -> list[str]:
    """``argv`` without the option of these spellings and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in spellings:
            skip = True
        elif not arg.startswith(tuple(f"{s}=" for s in spellings)):
            out.append(arg)
    return out
