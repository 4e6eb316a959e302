"""Evaluate an OCR model: CER/F1 per sample and overall.

By default the model is behind an OpenAI-compatible server (vLLM or core/serve.py); with
``--backend khmer-cnn --checkpoint PATH`` a trained Khmer-digits CNN, with ``--backend tesseract``
(``--tesseract-lang``, ``--psm``) or ``--backend rapidocr`` a classical OCR engine is scored on the same
data with the same figures, into the same results file layout.
"""

from __future__ import annotations

from gemma_ocr.cli import stop_on_sigterm
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.flags import ConfigParser
from gemma_ocr.scoring.results import failure_text, figure_text, interval_text, method_text


def main() -> int:
    p = ConfigParser(EvalConfig, description=__doc__)
    cfg, _ = p.parse_settings()
    stop_on_sigterm()  # `kill PID` saves what finished and says so, as Ctrl-C does
    out = evaluate(cfg)
    return print_summary(out.document, _limit(out), f"requested now {out.requested}, resumed {out.resumed}, {out.elapsed_s:.1f}s",
                         out.output_file)


def _limit(out) -> str:
    return "" if out.selected == out.dataset_size else f" (first {out.selected} of {out.dataset_size}: --top-k None for all)"


def print_summary(doc: dict, limit: str, timing: str, output_file) -> int:
    """Print the figures of a results document; exit code 1 when any sample failed or nothing was scored.

    Failures are named (their count and the first one's reason); a document without figures says why
    instead of printing any."""
    m, c = doc["metrics"], doc["status_counts"]
    print(f"model: {doc['model_name']}   samples: {doc['total_samples']}{limit}")
    print(f"status: {', '.join(f'{k} {n}' for k, n in c.items())}   {timing}".rstrip())
    failed = failure_text(doc.get("failures"), doc["total_samples"])
    if failed:
        print(f"failed: {failed}")
    if not m["raw"]["scored_samples"]:
        print(f"{doc.get('no_figures_reason') or 'no CER: no sample was scored'}; overall_cer is null in {output_file}; "
              "rerun the same command to retry the failed samples")
        return 1
    for label, key in (("raw", "raw"), ("normalized", "normalized")):
        mm = m[key]
        print(f"{label:<10} CER micro {figure_text(mm['cer_micro'])} {interval_text(mm.get('cer_micro_ci95'))}  CER macro "
              f"{figure_text(mm['cer_macro'])}  F1 micro {figure_text(mm['f1_micro'])} "
              f"{interval_text(mm.get('f1_micro_ci95'))}  F1 macro {figure_text(mm['f1_macro'])}")
    if doc.get("no_figures_reason"):
        print(doc["no_figures_reason"])
    unit = m.get("character_unit", "codepoint")
    other = {u: v for u, v in (m.get("by_unit") or {}).items() if u != unit}
    for name, figures in other.items():
        print(f"by {name}: CER micro raw {figure_text(figures['raw']['cer_micro'])}, "
              f"normalized {figure_text(figures['normalized']['cer_micro'])}")
    print(f"characters: {unit}; normalized ({m.get('normalization_profile', 'seed')}): {m['normalization']}")
    if m.get("confidence_interval"):
        print(f"[low, high]: {method_text(m['confidence_interval'])}")
    print("CER micro = total edits / total reference chars (overall_cer); macro = mean per-sample CER; errors are not scored")
    degenerate = {k: c.get(k, 0) for k in ("truncated", "repetition") if c.get(k)}
    if degenerate:
        rules = doc.get("status_rules") or {}
        for k, n in degenerate.items():
            print(f"note: {n} answers {k} ({rules.get(k, k)}); scored as they are")
    print(f"-> {output_file}")
    return 1 if c["error"] or doc.get("no_figures_reason") else 0
