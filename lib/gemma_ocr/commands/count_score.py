"""Recompute CER/F1 of a results file on normalized text (by default the seed's: no whitespace, ASCII or CJK
punctuation, no zero-width characters), with 95% bootstrap intervals and per-slice figures."""

from __future__ import annotations

from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.results import ScoringConfig, interval_text, method_text, rescore_normalized
from gemma_ocr.settings import ConfigParser


def main() -> None:
    p = ConfigParser(ScoringConfig, description=__doc__)
    p.add_argument("--input", required=True, help="results JSON written by evaluate.py")
    p.add_argument("--output", required=True, help="where to write the normalized results")
    p.add_argument("--nfkc", action="store_true", help="the same as --normalization nfkc (Unicode NFKC first)")
    scoring, args = p.parse_settings()
    if args.nfkc:
        scoring.normalization = "nfkc"
    out = rescore_normalized(read_json(args.input, "results file"), source=args.input, scoring=scoring)
    atomic_write_json(args.output, out)
    m = out["normalized_metrics"]
    failed = out["total_samples"] - m["scored_samples"]
    print(f"samples: {out['total_samples']} (scored {m['scored_samples']}, failed requests {failed} not scored, "
          f"empty references {m['empty_references']})")
    print(f"normalization ({out['normalization_profile']}): {out['normalization']}; characters: {out['character_unit']}")
    print(f"CER micro (total edits / total ref chars): {m['cer_micro']:.4f} {interval_text(m.get('cer_micro_ci95'))}  "
          f"original: {_figure(out['original_overall_cer'])}")
    print(f"CER macro (mean per sample):               {m['cer_macro']:.4f}")
    print(f"F1 micro:                                  {m['f1_micro']:.4f} {interval_text(m.get('f1_micro_ci95'))}  "
          f"original: {_figure(out['original_overall_f1'])}")
    print(f"F1 macro:                                  {m['f1_macro']:.4f}")
    if out.get("confidence_interval"):
        print(f"[low, high]: {method_text(out['confidence_interval'])}")
    print(f"-> {args.output}")


def _figure(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
