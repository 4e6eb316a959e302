"""The main job: every stage in order, each kept when its output exists and is current.

data (synthetic lines of :data:`~gemma_ocr.data.synthetic.SHIFTED_DIGITS`: digits in Noto Serif, a font
the shipped tiny reader was not pretrained on) -> split -> trivial baselines (empty answers; the most
common label where labels repeat) -> a short Optuna search of :data:`PIPELINE_SEARCH_SPACE` on the base
model (fixed parameters from configs/hyperparm_configs/default.json) -> LoRA SFT with the best
configuration -> merge to bf16 -> serve (embedded server) -> evaluate the base model and the fine-tuned
one on the same test samples -> their CER difference with a paired bootstrap 95% interval. With
``compare_with`` (``--compare-with tesseract rapidocr``) the OCR engines a user would pick instead read the
same test samples too (:mod:`gemma_ocr.evaluation.engines`), and the fine-tuned model is compared with each of them
(:func:`gemma_ocr.scoring.comparison.compare_documents`: interval, permutation test, per slice).

The pipeline's own outputs live apart from the manual workflow's (``models/pipeline/``,
``results/pipeline/``, the study ``pipeline``), so that running sft_gemma.py, merge, serve and
evaluate.py by hand never collides with it. The data (``data/raw_data/ocr.json`` and its split in
``data/input/``) is shared: the pipeline renders lines only when there is none, and runs on yours.

A stage's output is kept only while it was made from the same inputs: ``results/pipeline/state.json``
records a fingerprint of what each stage read (the split's files, the config, the model weights), so
after new data is imported and split, the search, training, merge and evaluations are redone.

Each stage reports to a :class:`~gemma_ocr.progress.StageLine` (``run_pipeline(cfg, Stages())``: one line per
stage on the screen; without it nothing is shown): the search's trial with the best CER so far, the training's
step and latest eval_cer, the samples an evaluation has read. The detail goes to the log
(:func:`gemma_ocr.progress.run_log`), the trainer's per-step figures included.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gemma_ocr.data.records import load_raw_records, load_records, write_records
from gemma_ocr.training.config import MAX_SEED
from gemma_ocr.data.split import DEFAULT_NON_TEST_RATIO, parse_ratio, ratio_problem, split_non_test
from gemma_ocr.data.synthetic import SHIFTED_DIGITS, generate_dataset, is_synthetic
from gemma_ocr.evaluation.engines import ENGINES
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, read_json
from gemma_ocr.layout import LAYOUT, Layout
from gemma_ocr.progress import StageLine, Stages, no_line
from gemma_ocr.scoring.results import build_document, figure_text
from gemma_ocr.search.config import DEFAULT_SEARCH_SPACE
from gemma_ocr.settings import FieldError, Settings, setting

log = logging.getLogger(__name__)

SEARCH_STUDY = "pipeline"
#: What the pipeline's search varies: the built-in space, how fast the adapters learn and whether the vision
#: tower gets adapters too (the shift is in the glyphs' shapes, which the SigLIP tower sees).
PIPELINE_SEARCH_SPACE = DEFAULT_SEARCH_SPACE
SEARCH_OBJECTIVE = "cer"  # trials are chosen and pruned by the CER of generated answers, not by the loss
BOOTSTRAP_RESAMPLES = 10_000
EMPTY_BASELINE, MAJORITY_BASELINE = "empty-answer baseline", "majority-label baseline"
BASE_ROW, TUNED_ROW = "base", "fine-tuned"
SCORE = "overall_cer"  # what a stage line says of a results document: its micro CER


STAGES = ("data", "split", "baseline", "search", "train", "merge", "evaluate")
job = functools.partial(setting, group="pipeline settings (also keys of the --config file)")


@dataclass
class PipelineConfig(Settings):
    """The main job's settings: each field a key of a ``--config`` file and a flag of core/pipeline.py."""

    root: Path = job(Path("."), f"folder that holds {LAYOUT.data}/, {LAYOUT.models}/ and {LAYOUT.results}/ "
                                "(--base-model and --train-config are relative to the working folder)")
    base_model: Path = job(LAYOUT.reader, "Gemma 3 checkpoint (folder or hub id) to fine-tune; by default the "
                                          "shipped tiny reader")
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


# ---------------------------------------------------------------- what each kept output was made from

WEIGHT_FILES = ("*.safetensors", "config.json", "adapter_config.json")


def _file_sha256(path: Path) -> str:
    """The file's SHA-256, read once per version of the file (the base model's weights serve several stages)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short digest of ``parts``: a file by its bytes, a model folder by its weights and config, the rest by value."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            files = sorted({f for pattern in WEIGHT_FILES for f in part.glob(pattern) if f.is_file()})
            h.update(json.dumps([(f.name, _file_sha256(f)) for f in files]).encode())
        elif isinstance(part, Path):
            h.update(_file_sha256(part).encode() if part.is_file() else b"missing")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class StageRecord:
    """The fingerprint of the inputs each stage's output was made from (``results/pipeline/state.json``)."""

    def __init__(self, path: Path):
        self.path = path
        data = read_json(path, "pipeline state") if path.is_file() else {}
        self.stages: dict[str, str] = data if isinstance(data, dict) else {}

    def keeps(self, cfg: PipelineConfig, stage: str, output: Path, exists: bool, inputs: str) -> bool:
        """Whether ``stage`` can keep its existing ``output``: there, made from ``inputs``, and no ``--force``."""
        if cfg.force or not exists:
            return False
        if self.stages.get(stage) == inputs:
            log.info("%s: %s exists, kept", stage, output)
            return True
        log.info("%s: %s was made from other inputs (data, configuration, model or seed changed): redoing it", stage, output)
        return False

    def done(self, stage: str, inputs: str) -> None:
        self.stages[stage] = inputs
        atomic_write_json(self.path, self.stages)


# ---------------------------------------------------------------- the stages


def check_base_model(cfg: PipelineConfig) -> None:
    """One line naming the pipeline's own flag when the base model is not a Gemma 3 checkpoint folder or hub id."""
    from gemma_ocr.modeling.loading import check_gemma3_vlm

    if not cfg.base_model.exists() and cfg.base_model == LAYOUT.reader:
        raise GemmaOcrError(f"the default base model {cfg.base_model} is not here: run the pipeline from the "
                            "repository's root folder (it ships there), or pass --base-model")
    try:
        check_gemma3_vlm(str(cfg.base_model))
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
    from gemma_ocr.search.runner import resolve_settings, run_search
    from gemma_ocr.search.space import parse_search_space
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
    from gemma_ocr.training.config import resolve_config
    from gemma_ocr.training.tune import tune
    from gemma_ocr.training.tracking import reporting_progress

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
    from gemma_ocr.merge.adapter import merge_adapter

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
    from gemma_ocr.evaluation.run import EvalConfig, evaluate
    from gemma_ocr.serving.process import start_server

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
    from gemma_ocr.evaluation.run import EvalConfig, evaluate

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
    from gemma_ocr.scoring.comparison import compare_documents

    found = {}
    for engine, doc in engines.items():
        found[engine] = compare_documents([(str(engine_results(cfg, engine)), doc), (str(cfg.tuned_results), tuned)],
                                          n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    atomic_write_json(cfg.results_dir / "comparison_engines.json", {e: c.to_dict() for e, c in found.items()})
    return found


def compare(cfg: PipelineConfig, base: dict, tuned: dict):
    """The fine-tuned model's CER against the base's on the same samples, with a paired bootstrap interval."""
    from gemma_ocr.scoring.comparison import compare_cer

    diff = compare_cer(base, tuned, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    atomic_write_json(cfg.comparison_file, {"baseline": base.get("model_name"), "candidate": tuned.get("model_name"),
                                            "baseline_file": str(cfg.base_results),
                                            "candidate_file": str(cfg.tuned_results), **diff.to_dict()})
    log.info("compare: %s -> %s", diff.describe(), cfg.comparison_file)
    return diff


def run_pipeline(cfg: PipelineConfig, stages: Stages | None = None) -> dict[str, dict]:
    """Run every stage; return the results documents by table row (and the comparison under ``"comparison"``).

    ``stages``: where each stage shows its line (:class:`~gemma_ocr.progress.Stages`); None: nowhere."""
    stages = stages or Stages(silent=True)
    if {"search", "train", "merge", "evaluate"} & set(cfg.stages):
        check_base_model(cfg)  # before any work
    if "data" in cfg.stages:
        with stages.stage("data") as line:
            make_data(cfg, line)
    if "split" in cfg.stages:
        with stages.stage("split") as line:
            split_data(cfg, line)
    results: dict[str, Any] = {}
    if "baseline" in cfg.stages:
        with stages.stage("baseline") as line:
            results.update(baselines(cfg, line))
    record = StageRecord(cfg.state_file)
    best_config = None
    if "search" in cfg.stages:
        with stages.stage("search", total=cfg.search_trials or None) as line:
            best_config = search(cfg, record, line)
    if "train" in cfg.stages:
        with stages.stage("train") as line:
            train(cfg, record, best_config, line)
    if "merge" in cfg.stages:
        with stages.stage("merge") as line:
            merge(cfg, record, line)
    if "evaluate" in cfg.stages:
        from gemma_ocr.training.config import resolve_config

        threads = resolve_config(cfg.train_config, {}).torch_threads  # as training ran: 1 for the tiny reader
        with stages.stage(f"evaluate {BASE_ROW}") as line:
            base = evaluate_served(cfg, record, cfg.base_model, cfg.base_results, threads, line)
        with stages.stage(f"evaluate {TUNED_ROW}") as line:
            tuned = evaluate_served(cfg, record, cfg.merged_dir, cfg.tuned_results, threads, line)
        results[f"{BASE_ROW} ({cfg.base_model.name})"] = base
        results[f"{TUNED_ROW} ({cfg.merged_dir.name})"] = tuned
        engines = {}
        for engine in cfg.compare_with:
            with stages.stage(f"evaluate {engine}") as line:
                engines[engine] = evaluate_engine(cfg, record, engine, line)
        for doc in engines.values():
            results[doc["model_name"]] = doc  # e.g. tesseract-5.3.0 eng psm7
        with stages.stage("report") as line:
            line.set("paired bootstrap interval of the CER difference")
            results["comparison"] = compare(cfg, base, tuned)
            if engines:
                line.set("the fine-tuned model against each engine")
                results["engine_comparison"] = compare_with_engines(cfg, tuned, engines)
            line.set("where the errors are")
            line.end(f"{cfg.comparison_file}, {error_report(cfg)}")
    return results


def error_report(cfg: PipelineConfig) -> Path:
    """Where the fine-tuned model's character errors are, against the base model's: ``results/pipeline/errors/``."""
    from gemma_ocr.reports.error_analysis import analyze_file, compare as compare_errors
    from gemma_ocr.reports.error_report import write_report

    tuned = analyze_file(cfg.tuned_results)
    comparison = compare_errors(tuned, analyze_file(cfg.base_results))
    report = write_report(tuned, cfg.error_report_dir, comparison=comparison)
    log.info("errors: %s", report.html)
    return report.html


def format_table(results: dict[str, Any]) -> str:
    """CER/F1 (micro, raw and normalized) of each model side by side, how varied its answers are, and the gain."""
    from gemma_ocr.scoring.answers import document_profile

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
