"""Transcribe images with a served OCR model into a JSON Lines file (one row per image: text, status).

Give image files, folders (searched recursively) or OCR data files. Rerunning the same command resumes.
Correct the texts, then `python core/import_ocr_data.py FILE.jsonl` makes training data of them. With
``--backend khmer-cnn --checkpoint PATH`` a Khmer-digits CNN transcribes instead of a server, with
``--backend tesseract`` or ``--backend rapidocr`` a classical OCR engine.
"""

from __future__ import annotations

import os

from gemma_ocr.cli import stop_on_sigterm
from gemma_ocr.data.records import resolve_image_path
from gemma_ocr.evaluation.transcription import TranscribeConfig, TranscribeOutcome, transcribe
from gemma_ocr.flags import ConfigParser, flag_value
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.scoring.results import STATUS_ERROR, STATUSES


def main() -> int:
    p = ConfigParser(TranscribeConfig, description=__doc__)
    p.add_argument("--show", type=flag_value(int), default=5, help="print the first N transcriptions (0: none)")
    cfg, args = p.parse_settings()
    stop_on_sigterm()  # `kill PID` saves what finished and says so, as Ctrl-C does
    check_outputs_not_inputs({"the input": cfg.inputs, "the checkpoint (--checkpoint)": cfg.checkpoint},
                             {"--output-file": cfg.output_file})
    return print_summary(transcribe(cfg), args.show)


def print_summary(out: TranscribeOutcome, show: int) -> int:
    """Counts, the first ``show`` transcriptions and the first failures; exit code 1 when any image failed."""
    counts = ", ".join(f"{status} {out.count(status)}" for status in STATUSES)
    print(f"model: {out.model_name}   images: {len(out.rows)}   {counts}   "
          f"requested now {out.requested}, resumed {out.resumed}, {out.elapsed_s:.1f}s")
    folder = out.output_file.parent.resolve()

    def shown(row: dict) -> str:  # the path from here, not from the output file's folder
        return os.path.relpath(resolve_image_path(row["image_path"], folder))

    for row in [r for r in out.rows if r["status"] != STATUS_ERROR][:max(show, 0)]:
        print(f"  {shown(row)}: {row['text']!r}")
    failed = [r for r in out.rows if r["status"] == STATUS_ERROR]
    for row in failed[:3]:
        print(f"  failed {shown(row)}: {row['error']}")
    if failed:
        print(f"{len(failed)} images failed; rerun the same command to retry them")
    if out.to_review:
        print(f"{out.to_review} lines marked \"review\": true (low confidence, cut at max_tokens or a repetition loop)")
    print(f"-> {out.output_file}")
    return 1 if failed else 0
