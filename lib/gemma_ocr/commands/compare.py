"""Compare models on the same test set: CER and F1 differences with paired bootstrap 95% intervals, a paired
permutation test, better/worse/same counts, overall and per slice (script, line length, source).

The first results file is the baseline (e.g. the base model, or Tesseract); each other one is compared with it
on the samples both scored. Files of different data files, or scored with different normalizations, are refused.
Prints a table and writes the comparison as JSON (--output).
"""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.scoring.comparison import CompareConfig, ModelComparison, PairedResult, compare_files
from gemma_ocr.io import atomic_write_json, check_writable
from gemma_ocr.outputs import output_file
from gemma_ocr.flags import ConfigParser


def main() -> int:
    p = ConfigParser(CompareConfig, description=__doc__)
    cfg, _ = p.parse_settings()
    folder = output_file(cfg.output, "--output", "gemma-ocr compare", {"the results file": cfg.results})
    check_writable(cfg.output, "--output")
    comparison = compare_files(cfg)
    print(render(comparison))
    atomic_write_json(cfg.output, comparison.to_dict())
    folder.record([Path(cfg.output).name])
    print(f"-> {cfg.output}")
    return 0


def _row(name: str, r: PairedResult, width: int) -> str:
    d = r.cer
    f1 = f"{r.f1.difference:+.4f} [{r.f1.low:+.4f}, {r.f1.high:+.4f}]" if r.f1 else "-"
    return (f"{name:<{width}} {d.candidate_cer:>7.4f} {d.difference:+8.4f} [{d.low:+.4f}, {d.high:+.4f}]  "
            f"{r.test.p_value:>7.4f} {r.test.sign_test_p:>7.4f}  {f1:<27} {r.better:>5}/{r.worse}/{r.same}")


def _header(width: int) -> str:
    return (f"{'':<{width}} {'CER':>7} {'ΔCER':>8} {'[95% interval]':<18}  {'p perm':>7} {'p sign':>7}  "
            f"{'ΔF1 [95% interval]':<27} better/worse/same")


def render(c: ModelComparison) -> str:
    """The comparison as a table: overall, then per slice."""
    first = c.candidates[0].overall.cer
    lines = [f"baseline: {c.baseline_name} ({c.baseline_source}), CER {first.baseline_cer:.4f} on the samples it shares "
             f"with {c.candidates[0].model_name}",
             f"text: {c.text}" + (f" ({c.normalization_profile})" if c.text == "normalized" else "")
             + f"; characters: {c.character_unit}; {c.confidence:.0%} paired bootstrap, {c.n_resamples} resamples and "
             f"permutations, seed {c.seed}" + (f"; clustered by {first.clustered_by}" if first.clustered_by else ""),
             ""]
    width = max(len(cand.model_name) for cand in c.candidates)
    lines.append(_header(width))
    for cand in c.candidates:
        lines.append(_row(cand.model_name, cand.overall, width)
                     + (f"  ({cand.left_out} samples not in both)" if cand.left_out else ""))
    for cand in c.candidates:
        rows = [(f"{dimension} {name} ({r.cer.samples})", r) for dimension, results in cand.slices.items()
                for name, r in results.items()]
        width = max(len(label) for label, _ in rows)
        lines += ["", f"{cand.model_name} against {c.baseline_name}, per slice:", _header(width)]
        lines += [_row(label, r, width) for label, r in rows]
    lines.append("")
    lines.append("ΔCER < 0: fewer errors than the baseline. p perm: paired permutation test of the CER difference; "
                 "p sign: sign test of better/worse; not corrected for several candidates or slices.")
    return "\n".join(lines)
