"""The main job's settings (:class:`PipelineConfig`: a key of a ``--config`` file and a flag of core/pipeline.py
each) and where its outputs go."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_ocr.data.split import DEFAULT_NON_TEST_RATIO, parse_ratio, ratio_problem
from gemma_ocr.data.synthetic import SHIFTED_DIGITS
from gemma_ocr.evaluation.engines import ENGINES
from gemma_ocr.layout import LAYOUT, Layout
from gemma_ocr.settings import FieldError, Settings, setting
from gemma_ocr.training.config import MAX_SEED

SEARCH_STUDY = "pipeline"
BOOTSTRAP_RESAMPLES = 10_000
STAGES = ("data", "split", "baseline", "search", "train", "merge", "evaluate")
job = functools.partial(setting, group="pipeline settings (also keys of the --config file)")


@dataclass
class PipelineConfig(Settings):
    """The main job's settings: each field a key of a ``--config`` file and a flag of core/pipeline.py."""

    root: Path = job(Path("."), f"folder that holds {LAYOUT.data}/, {LAYOUT.models}/ and {LAYOUT.results}/ "
                                "(--base-model and --train-config are relative to the working folder)")
    base_model: Path = job(LAYOUT.reader, "Gemma 3 or Gemma 4 checkpoint (folder or hub id) to fine-tune; by "
                                          "default the shipped tiny reader")
    n_samples: int = job(SHIFTED_DIGITS.n_samples, "synthetic lines to render when there is no data")
    non_test_ratio: float = job(DEFAULT_NON_TEST_RATIO, "share of the data for training and validation, e.g. 1:5 "
                                                        "(the default) or 0.2; the rest is the test set",
                                parse=parse_ratio)
    seed: int = job(42, "seed of the data, the split's shuffle aside, the search, the training and the bootstrap")
    force: bool = job(False, "redo every stage, also those whose outputs are current")
    train_config: Path = job(LAYOUT.train_config, "training config: the search's fixed parameters, and the final "
                                                  "training's without a search")
    eval_top_k: int | None = job(200, "first test samples scored per model, baselines included (None: all)")
    eval_workers: int = job(2, "parallel requests of each evaluation")
    eval_max_tokens: int = job(40, "longest answer in tokens")
    search_trials: int = job(3, "Optuna trials before the final training (0: none, train with --train-config)")
    bootstrap_resamples: int = job(BOOTSTRAP_RESAMPLES, "resamples of the paired bootstrap interval")
    stages: tuple[Literal[STAGES], ...] = job(STAGES, "the stages to run, in this order whatever the order given")
    compare_with: tuple[Literal[ENGINES], ...] = job((), "OCR engines that read the test set too, beside the models, "
                                                        "each compared with the fine-tuned one: tesseract (apt-get "
                                                        "install tesseract-ocr tesseract-ocr-eng), rapidocr (pip "
                                                        "install -e '.[engines]')", metavar="ENGINE")
    tesseract_lang: str = job("eng", "with --compare-with tesseract: its language data (eng; khm for Khmer)")

    def validate(self) -> None:
        """Types, then ranges; raise :class:`FieldError` on the first bad field."""
        super().validate()
        if ratio_problem(self.non_test_ratio):
            raise FieldError("non_test_ratio", ratio_problem(self.non_test_ratio))
        self.at_least(1, "n_samples", "eval_top_k", "eval_workers", "eval_max_tokens", "bootstrap_resamples")
        self.at_least(0, "search_trials")
        self.at_least(0, "seed", most=MAX_SEED)
        if not self.stages:
            raise FieldError("stages", f"names no stage (the stages: {', '.join(STAGES)})")

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    @property
    def adapter_dir(self) -> Path:
        """The manual workflow's adapter folder name, in the pipeline's own models folder."""
        return self.layout.pipeline_models / LAYOUT.adapter.name

    @property
    def merged_dir(self) -> Path:
        return self.layout.pipeline_models / LAYOUT.merged.name

    @property
    def best_config(self) -> Path:
        return self.layout.studies / f"{SEARCH_STUDY}_best_config.json"

    @property
    def results_dir(self) -> Path:
        return self.layout.pipeline_results

    @property
    def base_results(self) -> Path:
        return self.results_dir / "eval_base.json"

    @property
    def tuned_results(self) -> Path:
        return self.results_dir / "eval_finetuned.json"

    @property
    def comparison_file(self) -> Path:
        return self.results_dir / "comparison.json"

    @property
    def error_report_dir(self) -> Path:
        return self.results_dir / "errors"

    @property
    def state_file(self) -> Path:
        return self.results_dir / "state.json"

    @property
    def search_trials_dir(self) -> Path:
        return self.layout.search_trials / SEARCH_STUDY

    @property
    def log_dir(self) -> Path:
        """Where each run's log file goes (``pipeline-<UTC time>.log``)."""
        return self.results_dir / "logs"
