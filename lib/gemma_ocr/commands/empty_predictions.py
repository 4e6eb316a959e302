"""List the samples of a results file whose prediction is empty, with counts."""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.data.stats import empty_predictions
from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ArgumentParser, flag_value
from gemma_ocr.scoring.results import check_results_document


def main() -> None:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--input", default=str(LAYOUT.evaluation), help="results file written by evaluate.py")
    p.add_argument("--output", default=None, help=f"JSON list of the empty samples (default: {LAYOUT.data_analysis}/<name>_empty.json)")
    p.add_argument("--show", type=flag_value(int), default=20, help="how many to print")
    args = p.parse_args()
    doc = read_json(args.input, "results file")
    check_results_document(doc, args.input)
    empty = empty_predictions(doc)
    total = len(doc["samples"])
    print(f"{len(empty)} of {total} samples have an empty prediction ({len(empty) / max(total, 1):.1%})")
    for s in empty[: args.show]:
        print(f"  {s.get('image_path')}\tlabel={s.get('label')!r}")
    out = Path(args.output or LAYOUT.data_analysis / f"{Path(args.input).stem}_empty.json")
    atomic_write_json(out, {"source": args.input, "total_samples": total, "empty_predictions": len(empty), "samples": empty})
    print(f"list -> {out}")
