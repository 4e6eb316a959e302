"""Where a model's character errors are: a report of one evaluation results file, optionally against a baseline's.

Writes report.html (open it in a browser: plots, the most frequent confusions, the characters most often
missed, CER by line length, the worst samples with their images and edits highlighted), summary.json and
the plots as PNG files.
"""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.reports.error_analysis import analyze_file, compare, shown_char
from gemma_ocr.outputs import OutputFolder
from gemma_ocr.layout import LAYOUT
from gemma_ocr.scoring.metrics import CHARACTER_UNITS, DEFAULT_PROFILE, DEFAULT_UNIT, NORMALIZATION_PROFILES
from gemma_ocr.scoring.results import failure_summary, failure_text, figure_text
from gemma_ocr.flags import ArgumentParser, flag_value


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="?", default=str(LAYOUT.evaluation), help=f"results JSON of evaluate.py (default {LAYOUT.evaluation})")
    p.add_argument("--baseline", help="results JSON of another model on the same data (e.g. the base model) to compare with")
    p.add_argument("--output-dir", help=f"where to write the report (default: {LAYOUT.error_reports}/<results file name>)")
    p.add_argument("--worst", type=flag_value(int), default=30, help="how many worst samples (and regressions) to show")
    p.add_argument("--normalized", action="store_true",
                   help="compare normalized text (whitespace and punctuation removed), as the normalized CER does")
    p.add_argument("--normalization", choices=list(NORMALIZATION_PROFILES), default=DEFAULT_PROFILE,
                   help=f"with --normalized: the normalization profile (default {DEFAULT_PROFILE})")
    p.add_argument("--nfkc", action="store_true", help="the same as --normalization nfkc")
    p.add_argument("--char-unit", choices=list(CHARACTER_UNITS), default=DEFAULT_UNIT,
                   help="count code points (default) or grapheme clusters (Khmer: a misread vowel sign is one cluster)")
    args = p.parse_args()

    profile = "nfkc" if args.nfkc else args.normalization
    output_dir = Path(args.output_dir or LAYOUT.error_reports / Path(args.results).stem)
    # a rerun replaces the report it wrote; files it did not write are never replaced
    folder = OutputFolder(output_dir, "--output-dir", "gemma-ocr errors", overwrite_flag=None)
    inputs = {"the results file": args.results, "the baseline (--baseline)": args.baseline}
    folder.check_place(inputs)  # before the work; the report's files are checked again before they move in
    analysis = analyze_file(args.results, normalized=args.normalized, profile=profile, unit=args.char_unit)
    comparison = (compare(analysis, analyze_file(args.baseline, args.normalized, profile, args.char_unit))
                  if args.baseline else None)
    # the report loads matplotlib (start-up time): only once a report is asked for, not for --help
    from gemma_ocr.reports.error_report import write_report

    with folder.writing(inputs) as staged:
        report = write_report(analysis, staged, worst=args.worst, comparison=comparison)
    report.html = output_dir / report.html.name
    totals = report.summary_data["totals"]
    print(f"{analysis.model_name}: CER {figure_text(analysis.cer_micro)} ({analysis.text}) = {totals['edits']} edits / "
          f"{totals['reference_chars']} reference chars: {totals['substitutions']} misread, "
          f"{totals['deletions']} missed, {totals['insertions']} extra")
    print("statuses: " + ", ".join(f"{k} {n}" for k, n in report.summary_data["status_counts"].items()))
    for c in report.summary_data["confusions"][:5]:
        print(f"  {c['count']:>5}  {shown_char(c['reference'])} -> {shown_char(c['prediction'])}  ({c['kind']})")
    if comparison is not None:
        c = comparison.counts()
        print(f"against {comparison.baseline.model_name} (CER {figure_text(comparison.baseline.cer_micro)}): "
              f"{c['better']} better, {c['worse']} worse, {c['same']} same of {c['matched']} matched samples")
    flagged = [(analysis.model_name, report.summary_data["answers"]["flags"])]
    if comparison is not None:
        flagged.append((comparison.baseline.model_name, report.summary_data["baseline"]["answers"]["flags"]))
    for name, flags in flagged:
        for flag in flags:
            print(f"warning: {name}: {flag}")
    print(f"-> {report.html}")
    failed = failure_text(failure_summary(analysis.failed), len(analysis.samples) + len(analysis.failed))
    if failed:
        print(f"failed: {failed}")
    if analysis.cer_micro is None:
        why = "no sample was scored" if not analysis.samples else "every scored sample has an empty reference"
        print(f"no CER: {why} (rerun evaluate.py to retry failed samples)")
        return 1
    return 0
