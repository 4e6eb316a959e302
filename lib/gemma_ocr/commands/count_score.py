"""Recompute CER/F1 of a results file on normalized text (no whitespace, ASCII or CJK punctuation)."""

from __future__ import annotations

import argparse

from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.results import rescore_normalized


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    p.add_argument("--input", required=True, help="results JSON written by evaluate.py")
    p.add_argument("--output", required=True, help="where to write the normalized results")
    p.add_argument("--nfkc", action="store_true", help="also apply Unicode NFKC (full-width -> ASCII, ligatures ...)")
    args = p.parse_args()
    out = rescore_normalized(read_json(args.input, "results file"), source=args.input, nfkc=args.nfkc)
    atomic_write_json(args.output, out)
    m = out["normalized_metrics"]
    failed = out["total_samples"] - m["scored_samples"]
    print(f"samples: {out['total_samples']} (scored {m['scored_samples']}, failed requests {failed} not scored, "
          f"empty references {m['empty_references']})")
    print(f"CER micro (total edits / total ref chars): {m['cer_micro']:.4f}   original: {_figure(out['original_overall_cer'])}")
    print(f"CER macro (mean per sample):               {m['cer_macro']:.4f}")
    print(f"F1 micro:                                  {m['f1_micro']:.4f}   original: {_figure(out['original_overall_f1'])}")
    print(f"F1 macro:                                  {m['f1_macro']:.4f}")
    print(f"-> {args.output}")


def _figure(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
