"""The main job's stages, each a function of the settings (:class:`~gemma_ocr.pipeline.config.PipelineConfig`)
that reports to its :class:`~gemma_ocr.progress.StageLine` and keeps its output while the
:class:`~gemma_ocr.pipeline.state.StageRecord` says it is current: data, split, baselines, search, train, merge,
the evaluations (the models served by the embedded server, the OCR engines), the comparisons and the error report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gemma_ocr.data.records import load_raw_records, load_records, write_records
from gemma_ocr.data.split import split_non_test
from gemma_ocr.data.synthetic import SHIFTED_DIGITS, generate_dataset, is_synthetic
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.layout import LAYOUT
from gemma_ocr.merge.adapter import merge_adapter
from gemma_ocr.modeling.families import family_of
from gemma_ocr.pipeline.config import SEARCH_STUDY, PipelineConfig
from gemma_ocr.pipeline.state import StageRecord, fingerprint
from gemma_ocr.progress import StageLine, no_line
from gemma_ocr.reports.error_analysis import analyze_file, compare as compare_errors
from gemma_ocr.reports.error_report import write_report
from gemma_ocr.scoring.comparison import compare_cer, compare_documents
from gemma_ocr.scoring.results import build_document, figure_text
from gemma_ocr.search.config import DEFAULT_SEARCH_SPACE
from gemma_ocr.search.runner import resolve_settings, run_search
from gemma_ocr.search.space import parse_search_space
from gemma_ocr.serving.process import start_server
from gemma_ocr.training.config import resolve_config

log = logging.getLogger(__name__)

#: What the pipeline's search varies: the built-in space, how fast the adapters learn and whether the vision
#: tower gets adapters too (the shift is in the glyphs' shapes, which the SigLIP tower sees).
PIPELINE_SEARCH_SPACE = DEFAULT_SEARCH_SPACE
SEARCH_OBJECTIVE = "cer"  # trials are chosen and pruned by the CER of generated answers, not by the loss
EMPTY_BASELINE, MAJORITY_BASELINE = "empty-answer baseline", "majority-label baseline"
SCORE = "overall_cer"  # what a stage line says of a results document: its micro CER


def check_base_model(cfg: PipelineConfig) -> None:
    """One line naming the pipeline's own flag when the base model is not a supported (Gemma 3 or Gemma 4) checkpoint
    folder or hub id."""
    if not cfg.base_model.exists() and cfg.base_model == LAYOUT.reader:
        raise GemmaOcrError(f"the default base model {cfg.base_model} is not here: run the pipeline from the "
                            "repository's root folder (it ships there), or pass --base-model")
    try:
        family_of(str(cfg.base_model))
    except GemmaOcrError as e:
        raise GemmaOcrError(f"--base-model: {e}".replace("check --model-name", "check --base-model")) from None


def make_data(cfg: PipelineConfig, line: StageLine | None = None) -> None:
    """Render synthetic lines into data/raw_data/ unless data is there; ``--force`` re-renders only synthetic data."""
    line = line or no_line()
    if cfg.layout.raw_json.exists():
        if not cfg.force:
            log.info("data: %s exists, kept", cfg.layout.raw_json)
            line.end(f"kept {cfg.layout.raw_json}")
            return
        if not is_synthetic(cfg.layout.raw_json):
            log.info("data: %s is not synthetic data rendered here: kept (--force never replaces your own data)",
                     cfg.layout.raw_json)
            line.end(f"kept {cfg.layout.raw_json} (your own data: --force never replaces it)")
            return
    generate_dataset(cfg.layout.raw_json.parent, dataclasses.replace(SHIFTED_DIGITS, n_samples=cfg.n_samples, seed=cfg.seed),
                     progress=lambda done, total: line.set(f"rendering line {done} of {total}", done, total))
    log.info("data: %d synthetic lines of digits in %s -> %s", cfg.n_samples, SHIFTED_DIGITS.font, cfg.layout.raw_json)
    line.end(f"{cfg.n_samples} synthetic lines of digits in {SHIFTED_DIGITS.font} -> {cfg.layout.raw_json}")


def split_data(cfg: PipelineConfig, line: StageLine | None = None) -> None:
    split = split_non_test(load_raw_records(cfg.layout.raw_json), cfg.non_test_ratio)
    write_records(split.non_test, cfg.layout.non_test_json)
    write_records(split.test, cfg.layout.test_json)
    log.info("split: %d non_test, %d test", len(split.non_test), len(split.test))
    (line or no_line()).end(f"{len(split.non_test)} lines for training and validation, {len(split.test)} for testing "
                            f"-> {cfg.layout.non_test_json.parent}")


def baselines(cfg: PipelineConfig, line: StageLine | None = None) -> dict[str, dict]:
    """Score trivial models on the samples the served models get: empty answers, and the most common training
    label where a training label repeats (with unique labels it would be an arbitrary one)."""
    train, test = load_records(cfg.layout.non_test_json), load_records(cfg.layout.test_json)
    scored = test if cfg.eval_top_k is None else test[: cfg.eval_top_k]
    answers = {EMPTY_BASELINE: ("", "baseline_empty.json")}
    common = Counter(r.text for r in train).most_common(1)
    if common and common[0][1] > 1:
        answers[MAJORITY_BASELINE] = (common[0][0], "baseline_majority.json")
    out = {}
    for name, (guess, file) in answers.items():
        samples = [{"image_path": r.image_path, "label": r.text, "prediction": guess,
                    "status": "ok" if guess else "empty"} for r in scored]
        doc = build_document(samples, model_name=name, dataset_samples=len(test), top_k=cfg.eval_top_k)
        atomic_write_json(cfg.results_dir / file, doc)
        out[name] = doc
    (line or no_line()).end(f"{', '.join(f'{name} CER {figure_text(doc[SCORE])}' for name, doc in out.items())} "
                            f"on {len(scored)} test lines")
    return out


def set_aside(paths: list[Path]) -> list[Path]:
    """Rename each existing path to ``<stem>-<UTC time><suffix>`` beside it (an earlier run's outputs, kept
    rather than replaced); the new names."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    moved = []
    for path in paths:
        if path.exists():
            target = path.with_name(f"{path.stem}-{stamp}{path.suffix}")
            path.rename(target)
            moved.append(target)
    return moved


def search(cfg: PipelineConfig, record: StageRecord, line: StageLine | None = None) -> Path | None:
    """A short TPE search of :data:`PIPELINE_SEARCH_SPACE` on the base model; returns the best config file (kept while current)."""
    # here, not at the top: the trainer's progress imports transformers' Trainer (torch, seconds), which
    # `pipeline --help` and the stages before the search never need
    from gemma_ocr.training.tracking import reporting_progress

    line = line or no_line()
    if cfg.search_trials <= 0:
        line.end(f"none (--search-trials 0): training with {cfg.train_config}")
        return None
    inputs = fingerprint(cfg.layout.non_test_json, cfg.train_config, cfg.base_model, PIPELINE_SEARCH_SPACE,
                         cfg.search_trials, cfg.seed, SEARCH_OBJECTIVE)
    if record.keeps(cfg, "search", cfg.best_config, cfg.best_config.is_file(), inputs):
        line.end(f"kept {cfg.best_config} (made from the same data, config and model)")
        return cfg.best_config
    kept = set_aside([cfg.layout.studies / f"{SEARCH_STUDY}.db", cfg.best_config, cfg.search_trials_dir])
    if kept:  # made from other inputs (data, config, model, seed): kept under another name, never deleted
        log.warning("search: the earlier study was made from other inputs (data, configuration, model or seed); "
                    "kept as %s; starting a new one", ", ".join(str(p) for p in kept))
    settings = resolve_settings(
        None, study_name=SEARCH_STUDY, resume=True, studies_dir=cfg.layout.studies, default_config=cfg.train_config,
        overrides={"n_trials": cfg.search_trials, "sampler_seed": cfg.seed, "base_output_dir": cfg.search_trials_dir,
                   "objective": SEARCH_OBJECTIVE, "progress": False},  # the stage line instead of its bar
        fixed_overrides={"model_name": str(cfg.base_model), "input_data": str(cfg.layout.non_test_json)},
    )
    settings.search_space = parse_search_space(PIPELINE_SEARCH_SPACE)
    settings.fixed = {k: v for k, v in settings.fixed.items() if k not in settings.search_space}
    progress = SearchProgress(line, cfg.search_trials)
    with reporting_progress(progress):
        summary = run_search(settings, callbacks=[progress.trial_done])
    if summary.best_config_path is None:
        log.warning("search: no trial completed; training with %s", cfg.train_config)
        line.end(f"no trial completed: training with {cfg.train_config}")
        return None
    record.done("search", inputs)
    log.info("search: best %s %.4g (trial %s) %s -> %s", summary.metric, summary.best_value, summary.best_trial,
             summary.best_params, summary.best_config_path)
    ran = len(summary.trials_run)
    line.end(f"{ran} trial{'s' * (ran != 1)}, best {summary.metric} {summary.best_value:.4f} (trial "
             f"{summary.best_trial}) -> {summary.best_config_path}")
    return summary.best_config_path


def _eval_figure(metrics: dict[str, float]) -> str:
    """What an evaluation of a training is shown by: its eval_cer, else its eval_loss ("" when neither)."""
    for name in ("eval_cer", "eval_loss"):
        if isinstance(metrics.get(name), (int, float)):
            return f"{name} {metrics[name]:.4f}"
    return ""


class TrainProgress:
    """The train stage's line: the step of the run and its latest evaluation (a ``TrainingProgress``)."""

    def __init__(self, line: StageLine):
        self.line, self.evaluated = line, ""

    def training(self, step: int, max_steps: int, metrics: dict[str, float]) -> None:
        self.evaluated = _eval_figure(metrics) or (self.evaluated if step else "")
        self.line.set(" · ".join(filter(None, [f"step {step} of {max_steps}", self.evaluated])), step, max_steps)


class SearchProgress:
    """The search stage's line: trial k of n, the running trial's step and latest evaluation, the best objective so
    far. It is the trials' ``TrainingProgress`` and, with :meth:`trial_done`, the search's callback."""

    def __init__(self, line: StageLine, trials: int):
        self.line, self.trials = line, trials
        self.finished, self.best, self.step, self.evaluated = 0, "", "", ""

    def _show(self) -> None:
        running = min(self.finished + 1, self.trials)
        parts = [f"trial {running} of {self.trials}", self.step, self.evaluated, self.best]
        self.line.set(" · ".join(filter(None, parts)), self.finished, self.trials)

    def training(self, step: int, max_steps: int, metrics: dict[str, float]) -> None:
        self.step = f"step {step} of {max_steps}"
        self.evaluated = _eval_figure(metrics) or (self.evaluated if step else "")
        self._show()

    def trial_done(self, study: Any, trial: Any) -> None:
        """After each trial (the search's callback): the best so far from the study."""
        self.finished += 1
        self.step = self.evaluated = ""
        try:
            best = study.best_trial
        except (ValueError, RuntimeError):  # no trial completed yet (RuntimeError: a study of two objectives)
            best = None
        if best is not None:
            metric = study.user_attrs.get("metric", "objective")
            self.best = f"best {metric} {best.value:.4f} (trial {best.number})"
        self._show()


def train(cfg: PipelineConfig, record: StageRecord, config_file: Path | None = None,
          line: StageLine | None = None) -> Path:
    """LoRA SFT of the base model (the search's best config, else the default one); kept while current."""
    # here, not at the top: training imports torch and transformers (seconds), which `pipeline --help` and the
    # stages before it never need
    from gemma_ocr.training.tracking import reporting_progress
    from gemma_ocr.training.tune import tune  # torch and transformers too, as the line above

    line = line or no_line()
    config_file = config_file or cfg.train_config
    inputs = fingerprint(cfg.layout.non_test_json, config_file, cfg.base_model, cfg.seed)
    if record.keeps(cfg, "train", cfg.adapter_dir, (cfg.adapter_dir / "adapter_config.json").is_file(), inputs):
        line.end(f"kept {cfg.adapter_dir} (made from the same data, config and model)")
        return cfg.adapter_dir
    config = resolve_config(config_file, {
        "model_name": str(cfg.base_model),
        "input_data": str(cfg.layout.non_test_json),
        "output_dir": str(cfg.adapter_dir),
        "seed": cfg.seed,
    })
    if config.train_mode != "lora":
        raise GemmaOcrError(f"{config_file}: the pipeline trains LoRA adapters and merges them; "
                            f"set train_mode to \"lora\" (got {config.train_mode!r}) or pass another --train-config")
    line.set(f"loading {cfg.base_model}")
    with reporting_progress(TrainProgress(line)):
        result = tune(config)
    record.done("train", inputs)
    log.info("train: %d steps, train_loss %.4f, eval_loss %s -> %s", result["global_step"], result["train_loss"],
             result.get("eval_loss"), cfg.adapter_dir)
    saved = _eval_figure(result)
    if saved and result.get("metric_for_best_model") and result.get("eval_step") is not None:
        saved += f" (the best checkpoint by {result['metric_for_best_model']}: step {result['eval_step']})"
    line.end(" · ".join(filter(None, [f"{result['global_step']} steps", saved])) + f" -> {cfg.adapter_dir}")
    return cfg.adapter_dir


def merge(cfg: PipelineConfig, record: StageRecord, line: StageLine | None = None) -> Path:
    """Merge the adapter into the bf16 base (verified); kept while a verified merge of the same adapter exists."""
    line = line or no_line()
    report = cfg.merged_dir / "merge_report.json"
    inputs = fingerprint(cfg.adapter_dir, cfg.base_model)
    if record.keeps(cfg, "merge", cfg.merged_dir, report.is_file() and bool(read_json(report).get("verified")), inputs):
        line.end(f"kept {cfg.merged_dir} (a verified merge of the same adapter)")
        return cfg.merged_dir
    line.set(f"{cfg.adapter_dir} into {cfg.base_model} in bf16")
    r = merge_adapter(cfg.adapter_dir, cfg.merged_dir, base_model=str(cfg.base_model), overwrite=True)  # its own
    record.done("merge", inputs)
    log.info("merge: max |merged - (base+adapter)| %.3g <= %.3g -> %s", r.max_abs_diff, r.tolerance, cfg.merged_dir)
    line.end(f"verified (max |merged - (base+adapter)| {r.max_abs_diff:.3g} <= {r.tolerance:.3g}) -> {cfg.merged_dir}")
    return cfg.merged_dir


def evaluate_served(cfg: PipelineConfig, record: StageRecord, model_dir: Path, output: Path, threads: int,
                    line: StageLine | None = None) -> dict:
    """Serve ``model_dir`` with the embedded server (``threads`` torch threads, 0: torch's default), evaluate the
    test set on it, stop the server.

    Finished samples of an earlier run are kept (resumed) while the model and the test data are the same.
    """
    line = line or no_line()
    stage = f"evaluate {output.name}"
    inputs = fingerprint(model_dir, cfg.layout.test_json, cfg.eval_max_tokens)
    resume = record.keeps(cfg, stage, output, output.is_file(), inputs)
    line.set(f"starting a server of {model_dir}")
    with start_server(model_dir, startup_timeout=300,
                      extra_args=["--torch-threads", str(threads)] if threads else ()) as (url, name):
        settings = EvalConfig(urls=[url], data_file=cfg.layout.test_json, output_file=output, top_k=cfg.eval_top_k,
                              workers=cfg.eval_workers, model_name=name, save_interval=50,
                              max_tokens=cfg.eval_max_tokens, resume=resume, show_progress=False)
        settings.flags = {"resume": "--force", "top_k": "--eval-top-k", "workers": "--eval-workers"}  # pipeline.py's
        out = evaluate(settings, on_sample=SampleCount(line, cfg, resume))
    reason = out.document.get("no_figures_reason")
    if reason:  # a figure is never computed from nothing: the run stops here, its samples saved for a rerun
        raise GemmaOcrError(f"{stage}: no CER for {name}: {reason} (its samples: {output}; rerun to retry them)")
    record.done(stage, inputs)
    log.info("evaluate: %s -> %s (%d requested, %d resumed)", name, output, out.requested, out.resumed)
    line.end(_evaluated(out))
    return out.document


class SampleCount:
    """An evaluation's ``on_sample``: the samples read so far on the stage line (of the samples to score, unless the
    evaluation resumes an earlier one and reads only those missing)."""

    def __init__(self, line: StageLine, cfg: PipelineConfig, resume: bool):
        self.line, self.done, self.total = line, 0, None
        if not resume:
            tests = len(load_records(cfg.layout.test_json))
            self.total = tests if cfg.eval_top_k is None else min(tests, cfg.eval_top_k)

    def __call__(self, sample: dict[str, Any]) -> None:
        self.done += 1
        self.line.set(f"{self.done} of {self.total} samples" if self.total else f"{self.done} more samples",
                      self.done, self.total)


def _evaluated(out: Any) -> str:
    """An evaluation's last word on its line: samples, CER, where."""
    kept = f" ({out.resumed} from the last run)" if out.resumed else ""
    return f"{out.document['total_samples']} samples{kept}, CER {figure_text(out.document[SCORE])} -> {out.output_file}"


def engine_results(cfg: PipelineConfig, engine: str) -> Path:
    return cfg.results_dir / f"eval_{engine}.json"


def evaluate_engine(cfg: PipelineConfig, record: StageRecord, engine: str, line: StageLine | None = None) -> dict:
    """An OCR engine (``tesseract``, ``rapidocr``) on the same test samples, into ``results/pipeline/eval_<engine>.json``."""
    output = engine_results(cfg, engine)
    stage = f"evaluate {output.name}"
    inputs = fingerprint(cfg.layout.test_json, engine, cfg.tesseract_lang)
    resume = record.keeps(cfg, stage, output, output.is_file(), inputs)
    line = line or no_line()
    out = evaluate(EvalConfig(backend=engine, tesseract_lang=cfg.tesseract_lang, data_file=cfg.layout.test_json,
                              output_file=output, top_k=cfg.eval_top_k, workers=cfg.eval_workers, resume=resume,
                              ci_resamples=cfg.bootstrap_resamples, show_progress=False),
                   on_sample=SampleCount(line, cfg, resume))
    record.done(stage, inputs)
    log.info("evaluate: %s -> %s (%d read, %d resumed)", out.model_name, output, out.requested, out.resumed)
    line.end(_evaluated(out))
    return out.document


def compare_with_engines(cfg: PipelineConfig, tuned: dict, engines: dict[str, dict]):
    """The fine-tuned model against each engine on the same samples (``results/pipeline/comparison_engines.json``)."""
    found = {}
    for engine, doc in engines.items():
        found[engine] = compare_documents([(str(engine_results(cfg, engine)), doc), (str(cfg.tuned_results), tuned)],
                                          n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    atomic_write_json(cfg.results_dir / "comparison_engines.json", {e: c.to_dict() for e, c in found.items()})
    return found


def compare(cfg: PipelineConfig, base: dict, tuned: dict):
    """The fine-tuned model's CER against the base's on the same samples, with a paired bootstrap interval."""
    diff = compare_cer(base, tuned, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    atomic_write_json(cfg.comparison_file, {"baseline": base.get("model_name"), "candidate": tuned.get("model_name"),
                                            "baseline_file": str(cfg.base_results),
                                            "candidate_file": str(cfg.tuned_results), **diff.to_dict()})
    log.info("compare: %s -> %s", diff.describe(), cfg.comparison_file)
    return diff


def error_report(cfg: PipelineConfig) -> Path:
    """Where the fine-tuned model's character errors are, against the base model's: ``results/pipeline/errors/``."""
    tuned = analyze_file(cfg.tuned_results)
    comparison = compare_errors(tuned, analyze_file(cfg.base_results))
    report = write_report(tuned, cfg.error_report_dir, comparison=comparison)
    log.info("errors: %s", report.html)
    return report.html
