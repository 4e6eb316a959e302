"""Recompute CER/F1 of a results file on normalized text (by default the seed's: no whitespace, ASCII or CJK
punctuation, no zero-width characters), with 95% bootstrap intervals and per-slice figures."""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.io import atomic_write_json, check_writable, read_json
from gemma_ocr.outputs import output_file
from gemma_ocr.scoring.results import ScoringConfig, failure_text, figure_text, interval_text, method_text, rescore_normalized
from gemma_ocr.flags import ConfigParser


def main() -> int:
    """Rescore; exit code 1 when there is no CER (no sample scored, or only empty references: the output says why)."""
    p = ConfigParser(ScoringConfig, description=__doc__)
    p.add_argument("--input", required=True, help="results JSON written by evaluate.py")
    p.add_argument("--output", required=True, help="where to write the normalized results")
    p.add_argument("--nfkc", action="store_true", help="the same as --normalization nfkc (Unicode NFKC first)")
    scoring, args = p.parse_settings()
    if args.nfkc:
        scoring.normalization = "nfkc"
    folder = output_file(args.output, "--output", "gemma-ocr count-score", {"the results file (--input)": args.input})
    check_writable(args.output, "--output")
    out = rescore_normalized(read_json(args.input, "results file"), source=args.input, scoring=scoring)
    atomic_write_json(args.output, out)
    folder.record([Path(args.output).name])
    m = out["normalized_metrics"]
    failed = out["total_samples"] - m["scored_samples"]
    print(f"samples: {out['total_samples']} (scored {m['scored_samples']}, failed requests {failed} not scored, "
          f"empty references {m['empty_references']})")
    if out.get("failures"):
        print(f"failed: {failure_text(out['failures'], out['total_samples'])}")
    if not m["scored_samples"]:
        print(f"{out.get('no_figures_reason') or 'no CER: no sample was scored'}; overall_cer is null in {args.output}")
        return 1
    print(f"normalization ({out['normalization_profile']}): {out['normalization']}; characters: {out['character_unit']}")
    print(f"CER micro (total edits / total ref chars): {figure_text(m['cer_micro'])} "
          f"{interval_text(m.get('cer_micro_ci95'))}  original: {figure_text(out['original_overall_cer'])}")
    print(f"CER macro (mean per sample):               {figure_text(m['cer_macro'])}")
    print(f"F1 micro:                                  {figure_text(m['f1_micro'])} "
          f"{interval_text(m.get('f1_micro_ci95'))}  original: {figure_text(out['original_overall_f1'])}")
    print(f"F1 macro:                                  {figure_text(m['f1_macro'])}")
    if out.get("no_figures_reason"):
        print(out["no_figures_reason"])
    if out.get("confidence_interval"):
        print(f"[low, high]: {method_text(out['confidence_interval'])}")
    print(f"-> {args.output}")
    return 1 if out.get("no_figures_reason") else 0
