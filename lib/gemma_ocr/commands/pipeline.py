"""The main job: synthetic data -> split -> search -> LoRA SFT -> merge -> serve -> evaluate base and fine-tuned
side by side (CER/F1, the gain and its paired bootstrap 95% interval).

On the embedded defaults it fine-tunes the shipped tiny reader (pretrained on digits in Noto Sans) on digits
in Noto Serif, a font it was not pretrained on. Its files go to models/pipeline/ and results/pipeline/, apart
from those of the manual workflow (sft_gemma.py, gemma_adapter_merge.py, evaluate.py).

Settings: defaults < --config JSON/YAML (the keys are the flag names with _) < flags.
"""

from __future__ import annotations

from gemma_ocr.pipeline import PipelineConfig, format_table, run_pipeline
from gemma_ocr.settings import ConfigParser


def main() -> None:
    cfg, _ = ConfigParser(PipelineConfig, description=__doc__).parse_settings()
    results = run_pipeline(cfg)
    print(format_table(results))
    report = cfg.error_report_dir / "report.html"
    if "evaluate" in cfg.stages and report.is_file():
        print(f"Where the fine-tuned model errs, against the base model: {report} (python core/error_analysis.py)")
