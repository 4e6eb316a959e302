"""The main job's table: each model's CER/F1 side by side, how varied its answers are, and the gain."""

from __future__ import annotations

from typing import Any

from gemma_ocr.scoring.answers import document_profile
from gemma_ocr.scoring.results import figure_text


def format_table(results: dict[str, Any]) -> str:
    """CER/F1 (micro, raw and normalized) of each model side by side, how varied its answers are, and the gain."""
    docs = {name: doc for name, doc in results.items() if isinstance(doc, dict) and "samples" in doc}
    lines = [f"{'model':<34} {'CER':>8} {'F1':>8} {'CER norm':>9} {'F1 norm':>8} {'samples':>8} {'errors':>7} "
             f"{'distinct':>9} {'cut':>6}"]
    warnings = []
    for name, doc in docs.items():
        profile = document_profile(doc)
        cut = "n/a" if profile.truncated_share is None else f"{profile.truncated_share:.0%}"
        baseline = name.endswith("baseline")  # constant by construction
        flag = " !" if profile.flags and not baseline else ""
        lines.append(
            f"{name:<34} {figure_text(doc['overall_cer']):>8} {figure_text(doc['overall_f1']):>8} "
            f"{figure_text(doc['normalized_overall_cer']):>9} {figure_text(doc['normalized_overall_f1']):>8} "
            f"{doc['total_samples']:>8d} {doc['status_counts']['error']:>7d} "
            f"{profile.distinct:>9d} {cut:>6}{flag}"
        )
        if not baseline:
            warnings.extend(f"warning: {name}: {f}" for f in profile.flags)
    lines.append("CER = total edits / total reference characters (micro); F1 over character multisets (micro); "
                 "distinct = different answers; cut = answers that ran into max_tokens.")
    diff = results.get("comparison")
    if diff is not None:
        lines.append(f"Fine-tuned against base: CER {diff.baseline_cer:.4f} -> {diff.candidate_cer:.4f}; "
                     f"{diff.describe()}.")
        if not diff.excludes_zero:
            lines.append("The interval includes zero: no difference shown on these samples.")
    for engine, comparison in (results.get("engine_comparison") or {}).items():
        (candidate,) = comparison.candidates
        d, test = candidate.overall.cer, candidate.overall.test
        lines.append(f"Fine-tuned against {comparison.baseline_name}: CER {d.baseline_cer:.4f} -> {d.candidate_cer:.4f}; "
                     f"{d.describe()}; {test.describe()}; per slice: python core/compare_results.py.")
    lines.extend(warnings)
    limited = {(d.get("total_samples"), d.get("dataset_samples")) for d in docs.values()
               if d.get("dataset_samples") and d["total_samples"] < d["dataset_samples"]}
    for n, total in sorted(limited):
        lines.append(f"Scored on the first {n} of {total} test samples (--eval-top-k None for all).")
    return "\n".join(lines)
