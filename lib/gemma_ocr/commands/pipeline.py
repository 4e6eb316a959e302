"""The main job: synthetic data -> split -> search -> LoRA SFT -> merge -> serve -> evaluate base and fine-tuned
side by side (CER/F1, the gain and its paired bootstrap 95% interval).

On the embedded defaults it fine-tunes the shipped tiny reader (pretrained on digits in Noto Sans) on digits
in Noto Serif, a font it was not pretrained on. Its files go to models/pipeline/ and results/pipeline/, apart
from those of the manual workflow (sft_gemma.py, gemma_adapter_merge.py, evaluate.py).

The screen shows one line per stage, then the table; every stage's detail (the trainer's figures per step
included) goes to the run's log file, results/pipeline/logs/pipeline-<time>.log.

Settings: defaults < --config JSON/YAML (the keys are the flag names with _) < flags.
"""

from __future__ import annotations

import logging
import sys
import time

from gemma_ocr.io import check_writable
from gemma_ocr.pipeline.config import PipelineConfig
from gemma_ocr.pipeline.run import run_pipeline
from gemma_ocr.pipeline.table import format_table
from gemma_ocr.progress import Stages, run_log
from gemma_ocr.flags import ConfigParser


def main() -> None:
    cfg, _ = ConfigParser(PipelineConfig, description=__doc__).parse_settings()
    log_file = check_writable(cfg.log_dir / f"pipeline-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log",
                              "--root: the run's log")
    print(f"Every stage's detail goes to {log_file}", file=sys.stderr, flush=True)
    try:
        with run_log(log_file):
            results = run_pipeline(cfg, Stages())
            table = format_table(results)
            logging.getLogger(__name__).info("the results:\n%s", table)
    except BaseException:
        print(f"The run's log: {log_file}", file=sys.stderr, flush=True)
        raise
    print(table)
    report = cfg.error_report_dir / "report.html"
    if "evaluate" in cfg.stages and report.is_file():
        print(f"Where the fine-tuned model errs, against the base model: {report} (python core/error_analysis.py)")
    print(f"The run's log (every stage's detail, the trainer's figures per step): {log_file}")
