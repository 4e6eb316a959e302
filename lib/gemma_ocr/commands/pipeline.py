"""The main job: synthetic data -> split -> search -> LoRA SFT -> merge -> serve -> evaluate base and fine-tuned
side by side (CER/F1, the gain and its paired bootstrap 95% interval).

On the embedded defaults it fine-tunes the shipped tiny reader (pretrained on digits in Noto Sans) on digits
in Noto Serif, a font it was not pretrained on. Its files go to models/pipeline/ and results/pipeline/, apart
from those of the manual workflow (sft_gemma.py, gemma_adapter_merge.py, evaluate.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gemma_ocr.cli import none_or_int
from gemma_ocr.data.split import parse_ratio
from gemma_ocr.engines import ENGINES
from gemma_ocr.layout import LAYOUT
from gemma_ocr.pipeline import PipelineConfig, format_table, run_pipeline


def main() -> None:
    defaults = PipelineConfig()
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("."), help=f"folder that holds {LAYOUT.data}/, {LAYOUT.models}/, {LAYOUT.results}/")
    p.add_argument("--base-model", type=Path, default=LAYOUT.reader,
                   help=f"Gemma 3 checkpoint to fine-tune (default: the shipped tiny reader, {LAYOUT.reader})")
    p.add_argument("--n-samples", type=int, default=defaults.n_samples, help="synthetic lines to render")
    p.add_argument("--non-test-ratio", type=parse_ratio, default="1:5",
                   help="share of the data for training and validation, e.g. 1:5 or 0.2 (the rest is the test set)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--force", action="store_true", help="redo every stage, also those whose outputs are current")
    p.add_argument("--train-config", type=Path, default=defaults.train_config)
    p.add_argument("--eval-top-k", type=none_or_int, default=defaults.eval_top_k,
                   help="first test samples scored per model (None: all)")
    p.add_argument("--eval-workers", type=int, default=defaults.eval_workers)
    p.add_argument("--search-trials", type=int, default=defaults.search_trials,
                   help="Optuna trials before the final training (0: none)")
    p.add_argument("--compare-with", nargs="+", choices=list(ENGINES), default=[], metavar="ENGINE",
                   help="OCR engines that read the test set too, beside the models, each compared with the fine-tuned "
                        "one: tesseract (apt-get install tesseract-ocr tesseract-ocr-eng), rapidocr "
                        "(pip install -e '.[engines]')")
    p.add_argument("--tesseract-lang", default=defaults.tesseract_lang,
                   help="with --compare-with tesseract: its language data (eng; khm for Khmer)")
    args = p.parse_args()
    cfg = PipelineConfig(root=args.root, base_model=args.base_model, n_samples=args.n_samples,
                         non_test_ratio=args.non_test_ratio, seed=args.seed, force=args.force,
                         train_config=args.train_config, eval_top_k=args.eval_top_k, eval_workers=args.eval_workers,
                         search_trials=args.search_trials, compare_with=tuple(args.compare_with),
                         tesseract_lang=args.tesseract_lang)
    results = run_pipeline(cfg)
    print(format_table(results))
    report = cfg.error_report_dir / "report.html"
    if "evaluate" in cfg.stages and report.is_file():
        print(f"Where the fine-tuned model errs, against the base model: {report} (python core/error_analysis.py)")
