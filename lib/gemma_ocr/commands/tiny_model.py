"""Build a tiny Gemma 3 VLM checkpoint (real architecture, processor and chat template, hub weight layout).

--pretrain builds the shipped default model, the tiny reader, from random weights: it renders 10,000 lines
of 4-10 digits in Noto Sans, trains every weight (1 torch thread, deterministic), reads 200 held-out lines
rendered with another seed and writes the folder only if their CER is at most the target (about 8-15
CPU-minutes). Without --pretrain it writes a random-weight model (a starting point, or "any Gemma 3").
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT
from gemma_ocr.modeling.reader import READER_ARCHITECTURE, ReaderRecipe, pretrain_reader
from gemma_ocr.modeling.tiny import build_tiny_gemma3


def main() -> None:
    recipe = ReaderRecipe()
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", action="store_true", help="pretrain the tiny reader (the shipped default model)")
    p.add_argument("--output-dir", default=None,
                   help=f"folder for the checkpoint (default: {LAYOUT.reader} with --pretrain, else {LAYOUT.random_model})")
    p.add_argument("--seed", type=int, default=recipe.seed, help="weight initialisation (and training order)")
    g = p.add_argument_group("pretraining (--pretrain)")
    g.add_argument("--lines", type=int, default=recipe.lines, help="pretraining lines to render")
    g.add_argument("--max-steps", type=int, default=recipe.max_steps, help="optimizer steps at the full learning rate")
    g.add_argument("--anneal-steps", type=int, default=recipe.anneal_steps,
                   help="then steps with the learning rate falling to 0 (0: none)")
    g.add_argument("--threads", type=int, default=recipe.threads, help="torch threads (1 is fastest on a shared CPU)")
    g.add_argument("--target-cer", type=float, default=recipe.target_cer,
                   help="fail, writing nothing, when the held-out CER is above this")
    g.add_argument("--work-dir", default=None, help="keep the data and the training run here (default: a temporary folder)")
    g.add_argument("--curve-every", type=int, default=recipe.curve_every,
                   help="also measure held-out CER every N steps, on the first 50 held-out lines (0: never)")
    r = p.add_argument_group("random weights (without --pretrain)")
    r.add_argument("--chars", default=None, help="extra characters to give their own tokens")
    r.add_argument("--chars-from", default=None, help="an OCR data JSON file whose transcriptions add characters")
    r.add_argument("--image-size", type=int, default=64, help="square input size of the vision tower")
    args = p.parse_args()
    for name in ("lines", "max_steps", "threads"):
        if getattr(args, name) < 1:
            raise GemmaOcrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.pretrain:
        if args.anneal_steps < 0:
            raise GemmaOcrError(f"--anneal-steps must be >= 0, got {args.anneal_steps}")
        recipe = ReaderRecipe(lines=args.lines, max_steps=args.max_steps, anneal_steps=args.anneal_steps,
                              threads=args.threads, seed=args.seed,
                              target_cer=args.target_cer, curve_every=args.curve_every)
        kept = _without_option(sys.argv[1:], "--work-dir")  # where the run is kept does not change the result
        command = "python core/make_tiny_model.py " + shlex.join(kept)
        report = pretrain_reader(args.output_dir or LAYOUT.reader, recipe, work_dir=args.work_dir, command=command)
        print(f"Wrote the tiny reader to {report.output_dir}: held-out CER {report.heldout_cer:.4f} on "
              f"{report.heldout_lines} lines (target <= {recipe.target_cer}), {report.cpu_seconds:.0f} CPU-s "
              f"({report.wall_seconds:.0f} s wall)")
        return
    output_dir = args.output_dir or str(LAYOUT.random_model)
    if Path(output_dir) == LAYOUT.reader:
        raise GemmaOcrError(f"--output-dir {output_dir} holds the shipped reader: a random model goes elsewhere "
                            "(or rebuild the reader with --pretrain)")
    chars = args.chars or ""
    if args.chars_from:
        from gemma_ocr.data.records import load_records

        chars += "".join(sorted({c for rec in load_records(args.chars_from) for c in rec.text}))
    size = dict(READER_ARCHITECTURE, image_size=args.image_size)
    out = build_tiny_gemma3(output_dir, chars=chars or None, seed=args.seed, **size)
    print(f"Wrote a random-weight tiny Gemma 3 to {out}")


def _without_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
