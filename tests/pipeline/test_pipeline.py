"""The main job end to end on the shipped tiny reader, scaled down: every stage really runs and fine-tuning helps;
what it shows (one line per stage, the table) and what goes to the run's log file."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
from pathlib import Path

import pytest

from tests.helpers.programs import REPO, assert_one_line_error, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
STAGE_LINE = re.compile(r"^(data|split|baseline|search|train|merge|evaluate [a-z-]+|report): .+ \[\d+:\d\d\]$")


def run_log_of(proc) -> Path:
    """The run's log file: named on the first line of stderr and the last of stdout."""
    first = proc.stderr.splitlines()[0]
    assert first.startswith("Every stage's detail goes to "), proc.stderr
    path = Path(first.removeprefix("Every stage's detail goes to "))
    assert proc.stdout.rstrip().splitlines()[-1].endswith(f": {path}"), proc.stdout
    assert path.is_file() and path.parent.name == "logs"
    return path


def manual_workflow_files(root):
    """What the README's manual sequence (sft_gemma.py, merge, evaluate.py) leaves in the same folder."""
    from gemma_ocr.scoring.results import build_document

    files = {root / "results/gemma_evaluation.json": json.dumps(build_document(
        [{"index": 0, "image_path": "x.png", "label": "12", "prediction": "12", "status": "ok"}],
        model_name="merged-gemma-ocr", data_file="data/input/ocr_test.json")),
        root / "models/gemma-ocr/adapter_config.json": "{}", root / "models/merged-gemma-ocr/config.json": "{}"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {path: path.read_bytes() for path in files}


@pytest.mark.e2e
def test_pipeline_fine_tunes_the_reader_and_shows_the_gain(tmp_path):
    manual = manual_workflow_files(tmp_path)
    args = ("--root", str(tmp_path), "--n-samples", "720", "--non-test-ratio", "1:1", "--eval-top-k", "80",
            "--search-trials", "1")
    proc = run_cli("pipeline.py", *args, timeout=900, env=ONE_THREAD)
    out = proc.stdout
    # the screen (not a terminal here): one line per stage when it ends (and one a minute while a long one runs),
    # then the table; the detail in the log
    stage_lines = proc.stderr.splitlines()[1:]
    assert list(dict.fromkeys(line.split(":")[0] for line in stage_lines)) == [
        "data", "split", "baseline", "search", "train", "merge", "evaluate base", "evaluate fine-tuned", "report"]
    assert all(STAGE_LINE.match(line) for line in stage_lines) and len(stage_lines) < 30, proc.stderr
    assert re.search(r"^search: 1 trial, best eval_cer 0\.\d{4} \(trial 0\) -> .*pipeline_best_config\.json", proc.stderr, re.M)
    assert re.search(r"^train: \d+ steps · eval_cer 0\.\d{4} \(the best checkpoint by eval_cer: step \d+\)", proc.stderr, re.M)
    assert re.search(r"^evaluate fine-tuned: 80 samples, CER 0\.\d{4} -> ", proc.stderr, re.M)
    for noise in ("'loss'", "it/s", "%|", "INFO ", "Loading weights", "[I "):
        assert noise not in proc.stderr + out, noise
    log = run_log_of(proc).read_text(encoding="utf-8")
    per_step = re.findall(r"gemma_ocr\.training\.tracking: step (\d+) of (\d+): (\{.*\})$", log, re.M)
    assert len(per_step) > 20 and any("eval_cer" in json.loads(d) for *_, d in per_step)
    assert any("loss" in json.loads(d) for *_, d in per_step)  # the trainer's dicts, search trial and training
    assert "gemma_ocr.search.runner: trial 0 COMPLETE" in log and "A new study created" in log  # Optuna's own line
    assert "Fine-tuned against base: CER" in log  # the table too
    results = tmp_path / "results/pipeline"
    base = json.loads((results / "eval_base.json").read_text())
    tuned = json.loads((results / "eval_finetuned.json").read_text())
    comparison = json.loads((results / "comparison.json").read_text())
    # the gain: lower CER on the same shifted test lines, an interval below zero, in the files and the table
    assert tuned["overall_cer"] < base["overall_cer"], (base["overall_cer"], tuned["overall_cer"])
    assert comparison["baseline_cer"] == pytest.approx(base["overall_cer"])
    assert comparison["candidate_cer"] == pytest.approx(tuned["overall_cer"])
    assert comparison["high"] < 0 and comparison["excludes_zero"] and comparison["samples"] == 80
    assert comparison["n_resamples"] == 10_000 and comparison["seed"] == 42
    assert f"CER {base['overall_cer']:.4f} -> {tuned['overall_cer']:.4f}" in out, out
    assert "paired bootstrap over 80 samples, 10000 resamples, seed 42" in out
    rows = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if line.startswith(("base", "fine"))}
    assert f"{base['overall_cer']:.4f}" in rows["base (tiny-gemma3-reader)"]
    assert f"{tuned['overall_cer']:.4f}" in rows["fine-tuned (merged-gemma-ocr)"]
    assert "empty-answer baseline" in out and "majority-label baseline" not in out  # the labels never repeat here
    assert "warning:" not in out  # neither model is constant or cut off
    for doc in (base, tuned):
        assert doc["total_samples"] == 80 and doc["status_counts"]["error"] == 0
        assert all(s["finish_reason"] == "stop" for s in doc["samples"])
        assert len({s["prediction"] for s in doc["samples"]}) > 60
    errors = json.loads((results / "errors/summary.json").read_text(encoding="utf-8"))
    assert errors["cer_micro"] == pytest.approx(tuned["overall_cer"]) and errors["baseline"]["matched"] == 80
    assert str(results / "errors/report.html") in out
    assert json.loads((tmp_path / "models/pipeline/merged-gemma-ocr/merge_report.json").read_text())["verified"]
    # the final training ran with the search's best configuration, on the shipped reader
    best = json.loads((tmp_path / "optuna_studies/pipeline_best_params.json").read_text())
    used = json.loads((tmp_path / "models/pipeline/gemma-ocr/train_config.json").read_text())
    assert best["best_params"]["learning_rate"] == used["learning_rate"]
    assert best["best_params"]["finetune_vision_layers"] == used["finetune_vision_layers"]
    assert used["model_name"] == "models/tiny-gemma3-reader" and used["train_mode"] == "lora"
    # the manual workflow's files are untouched
    assert {path: path.read_bytes() for path in manual} == manual

    # run again unchanged: every stage keeps its output, nothing is requested again
    proc = run_cli("pipeline.py", *args, timeout=900, env=ONE_THREAD)
    log = run_log_of(proc).read_text(encoding="utf-8")
    for stage in ("search", "train", "merge", "evaluate eval_base.json", "evaluate eval_finetuned.json"):
        assert f"INFO gemma_ocr.pipeline.state: {stage}: " in log and "redoing" not in log, log
    assert log.count("(0 requested, 80 resumed)") == 2, log
    for stage in ("search", "train", "merge"):
        assert re.search(rf"^{stage}: kept ", proc.stderr, re.M), proc.stderr
    assert re.search(r"^evaluate base: 80 samples \(80 from the last run\), CER", proc.stderr, re.M), proc.stderr

    # new data, as an import and split leave it: everything made from the old split is redone
    from gemma_ocr.data.records import load_raw_records, write_records

    raw = tmp_path / "data/raw_data/ocr.json"
    write_records(load_raw_records(raw)[:600], raw, raw=True)
    proc = run_cli("pipeline.py", *args, timeout=900, env=ONE_THREAD)
    log = run_log_of(proc).read_text(encoding="utf-8")
    for stage in ("search", "train", "merge", "evaluate eval_base.json", "evaluate eval_finetuned.json"):
        assert f"INFO gemma_ocr.pipeline.state: {stage}: " in log and "was made from other inputs" in log, log
    assert log.count("(80 requested, 0 resumed)") == 2 and "Scored on the first 80 of 300 test samples" in proc.stdout


def test_a_stopped_run_names_its_log_and_the_stage_it_stopped_in(tmp_path):
    (tmp_path / "not-a-config.json").write_text("[1]")
    proc = run_cli("pipeline.py", "--root", str(tmp_path), "--n-samples", "12", "--train-config",
                   str(tmp_path / "not-a-config.json"), "--search-trials", "0", check=False, env=ONE_THREAD)
    line = assert_one_line_error(proc, "not-a-config.json")
    assert re.search(r"^train: .*stopped \[\d+:\d\d\]$", proc.stderr, re.M), proc.stderr
    named = [l for l in proc.stderr.splitlines() if l.startswith("The run's log: ")]
    assert len(named) == 1 and proc.stderr.index(named[0]) < proc.stderr.index(line)
    log = Path(named[0].removeprefix("The run's log: ")).read_text(encoding="utf-8")
    assert "ERROR gemma_ocr.progress: stopped: GemmaOcrError: " in log and "Traceback" not in log
    # a root where no log can be written: one line before any work
    (tmp_path / "a-file").write_text("")
    proc = run_cli("pipeline.py", "--root", str(tmp_path / "a-file/job"), check=False)
    assert_one_line_error(proc, "--root: the run's log", "a-file is a file, not a folder")


def test_stage_lines_on_a_terminal_and_elsewhere():
    from gemma_ocr.progress import Stages

    plain = io.StringIO()
    stages = Stages(plain, live=False, interval=3600)
    with stages.stage("train") as line:
        for step in range(500):
            line.set(f"step {step} of 500", step, 500)
        assert plain.getvalue() == ""  # not a terminal: nothing while it runs (within the interval)
        line.end("500 steps -> models/x")
    with pytest.raises(RuntimeError), stages.stage("merge") as line:
        line.set("loading")
        raise RuntimeError("no room")
    with stages.stage("report") as line:
        line.set("writing")  # ended by the block with its last text
    assert plain.getvalue().splitlines() == ["train: 500 steps -> models/x [00:00]", "merge: loading - stopped [00:00]",
                                             "report: writing [00:00]"]
    heartbeat = io.StringIO()
    with Stages(heartbeat, live=False, interval=0).stage("search") as line:
        line.set("trial 1 of 3", 0, 3)
        line.end("3 trials")
    assert heartbeat.getvalue().splitlines() == ["search: trial 1 of 3 [00:00]", "search: 3 trials [00:00]"]

    terminal = io.StringIO()
    with Stages(terminal, live=True).stage("evaluate base", total=200) as line:
        line.set("starting a server")
        for done in range(1, 201):
            line.set(f"{done} of 200 samples", done)
        line.end("200 samples, CER 0.1679 -> results/pipeline/eval_base.json")
    shown = terminal.getvalue()
    assert "\revaluate base: starting a server" in shown and "\n" == shown[-1] and shown.count("\n") == 1
    assert shown.rsplit("\r", 1)[-1] == "evaluate base: 200 samples, CER 0.1679 -> results/pipeline/eval_base.json [00:00]\n"
    silent = Stages(silent=True)
    with silent.stage("data") as line:
        line.end("nothing shown")
    assert silent.stream is None and not silent.live


def test_run_log_keeps_the_detail_in_the_file_and_warnings_of_ours_on_the_console(tmp_path):
    import transformers
    from transformers.utils import logging as hf_logging

    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.progress import run_log

    root = logging.getLogger()
    console = logging.StreamHandler(io.StringIO())  # as cli.setup_logging makes it
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)
    level, hf_handlers = root.level, list(logging.getLogger("transformers").handlers)
    path = tmp_path / "logs/run.log"
    try:
        with pytest.raises(GemmaOcrError), run_log(path):
            assert not hf_logging.is_progress_bar_enabled()
            logging.getLogger("gemma_ocr.x").info("a stage's detail")
            logging.getLogger("gemma_ocr.x").warning("a warning of ours")
            logging.getLogger("bitsandbytes.cpu").warning("a library's warning")
            hf_logging.get_logger("transformers.trainer").warning("transformers' own warning")
            warnings.warn("a Python warning", UserWarning)
            raise GemmaOcrError("config.json: no such file")
    finally:
        root.removeHandler(console)
    assert console.stream.getvalue() == "WARNING a warning of ours\n"
    text = path.read_text(encoding="utf-8")
    for said in ("INFO gemma_ocr.x: a stage's detail", "WARNING gemma_ocr.x: a warning of ours",
                 "WARNING bitsandbytes.cpu: a library's warning", "WARNING transformers.trainer: transformers' own warning",
                 "WARNING py.warnings: ", "a Python warning",
                 "ERROR gemma_ocr.progress: stopped: GemmaOcrError: config.json: no such file"):
        assert said in text, (said, text)
    assert "Traceback" not in text  # a user's error is one line there too
    # everything as it was
    assert hf_logging.is_progress_bar_enabled() and logging.getLogger("transformers").handlers == hf_handlers
    assert root.level == level and not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers)
    assert transformers.__version__


def test_a_training_reporting_progress_prints_nothing_of_its_own(tmp_path, capfd, caplog):
    """The trainer's bar and per-step dicts give way to the caller's line; the dicts go to the log. With the best
    checkpoint kept by eval_cer and save_steps not set, checkpoints follow eval_steps (2 here)."""
    import torch

    from gemma_ocr.training.config import resolve_config
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SHIFTED_DIGITS, generate_dataset
    from gemma_ocr.training.tune import tune
    from gemma_ocr.training.tracking import reporting_progress

    import dataclasses

    data = write_records(generate_dataset(tmp_path / "raw", dataclasses.replace(SHIFTED_DIGITS, n_samples=24, seed=3)),
                         tmp_path / "data.json")
    config = resolve_config(REPO / "configs/hyperparm_configs/default.json", {
        "model_name": str(REPO / "models/tiny-gemma3-reader"), "input_data": str(data),
        "output_dir": str(tmp_path / "out"), "max_steps": 4, "eval_steps": 2, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "train_split": "train[:16]", "val_split": "train[16:]", "cer_eval_samples": 4,
        "report_to": ["none"], "save_total_limit": None, "logging_steps": 1})
    assert config.save_steps is None and config.metric_for_best_model == "eval_cer"
    seen = []

    class Recorder:
        def training(self, step, max_steps, metrics):
            seen.append((step, max_steps, sorted(metrics)))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level(logging.INFO, logger="gemma_ocr"), reporting_progress(Recorder()):
            result = tune(config)
    finally:
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    for noise in ("'loss'", "eval_cer", "/4 [", "/1 ["):  # the dicts, the trainer's step and evaluation bars
        assert noise not in out + err, (noise, out, err)  # (transformers' weight-loading bar: run_log turns it off)
    assert [s for s, m, _ in seen if m == 4][:1] == [0] and seen[-1][0] == 4
    assert [s for s, _, metrics in seen if "eval_cer" in metrics] == [0, 2, 4]  # eval_on_start, then every 2 steps
    logged = [r.getMessage() for r in caplog.records if r.name == "gemma_ocr.training.tracking"]
    assert any(m.startswith("step 1 of 4: {") and '"loss"' in m for m in logged), logged
    assert any(m.startswith("step 2 of 4: {") and '"eval_cer"' in m for m in logged), logged
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert result["metric_for_best_model"] == "eval_cer" and result["eval_step"] in (2, 4)


def test_a_missing_base_model_names_the_pipelines_own_flag(tmp_path):
    proc = run_cli("pipeline.py", "--root", str(tmp_path), "--base-model", str(tmp_path / "none"), check=False)
    line = assert_one_line_error(proc, "--base-model", "neither a local folder nor a reachable hub id")
    assert "--model-name" not in line
    # the default reader ships in the repository: from elsewhere the error says where to run
    proc = run_cli("pipeline.py", "--root", str(tmp_path), cwd=tmp_path, check=False)
    line = assert_one_line_error(proc, "models/tiny-gemma3-reader", "repository's root folder", "--base-model")
    assert not (tmp_path / "data").exists()  # it stopped before any work


def test_every_flag_an_error_names_is_a_flag_of_the_pipeline(tmp_path):
    import re

    flags = set(re.findall(r"--[a-z][a-z-]+", run_cli("pipeline.py", "--help").stdout))
    bad_ratio = run_cli("pipeline.py", "--root", str(tmp_path), "--non-test-ratio", "7", check=False)
    no_model = run_cli("pipeline.py", "--root", str(tmp_path), "--base-model", "nowhere", check=False,
                       env={"HF_HUB_OFFLINE": "1"})
    for proc in (bad_ratio, no_model):
        named = set(re.findall(r"--[a-z][a-z-]+", proc.stderr))
        assert named and named <= flags, (named - flags, proc.stderr)


def test_force_re_renders_synthetic_data_but_never_replaces_your_own(tmp_path):
    from gemma_ocr.data.records import load_raw_records, write_records
    from gemma_ocr.data.synthetic import is_synthetic
    from gemma_ocr.pipeline.config import PipelineConfig
    from gemma_ocr.pipeline.stages import make_data

    cfg = PipelineConfig(root=tmp_path, n_samples=6)
    make_data(cfg)
    assert is_synthetic(cfg.layout.raw_json) and len(load_raw_records(cfg.layout.raw_json)) == 6
    assert all(r.text.isdigit() for r in load_raw_records(cfg.layout.raw_json))  # the shifted distribution: digits
    make_data(PipelineConfig(root=tmp_path, n_samples=9))  # kept without --force
    assert len(load_raw_records(cfg.layout.raw_json)) == 6
    make_data(PipelineConfig(root=tmp_path, n_samples=9, force=True))  # synthetic: re-rendered
    assert len(load_raw_records(cfg.layout.raw_json)) == 9

    own = load_raw_records(cfg.layout.raw_json)[:2]  # e.g. written by core/import_ocr_data.py --force
    write_records(own, cfg.layout.raw_json, raw=True)
    assert not is_synthetic(cfg.layout.raw_json)
    make_data(PipelineConfig(root=tmp_path, n_samples=9, force=True))
    assert load_raw_records(cfg.layout.raw_json) == own


def test_pipeline_help_names_the_shipped_reader():
    assert "tiny reader" in run_cli("pipeline.py", "--help").stdout
    assert "the shipped tiny reader" in run_cli("sft_gemma.py", "--help").stdout
    assert os.path.isdir(REPO / "models/tiny-gemma3-reader")


def test_pipeline_settings_come_from_defaults_a_config_file_and_flags(tmp_path):
    from pathlib import Path

    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.layout import LAYOUT
    from gemma_ocr.pipeline.config import PipelineConfig
    from gemma_ocr.flags import ConfigParser

    def parse(*argv):
        return ConfigParser(PipelineConfig).parse_settings(list(argv))[0]

    defaults = parse()
    assert (defaults.base_model, defaults.train_config, defaults.eval_top_k) == (LAYOUT.reader, LAYOUT.train_config, 200)
    config = tmp_path / "job.yaml"
    config.write_text("n_samples: 50\nnon_test_ratio: '1:1'\neval_top_k: null\nseed: 7\nstages: [data, split]\n")
    cfg = parse("--config", str(config), "--seed", "8", "--root", str(tmp_path))
    assert (cfg.n_samples, cfg.non_test_ratio, cfg.eval_top_k, cfg.seed) == (50, 0.5, None, 8)
    assert cfg.stages == ("data", "split") and cfg.root == tmp_path and cfg.layout.test_json == tmp_path / LAYOUT.test_json
    assert parse("--non-test-ratio", "0.25", "--eval-top-k", "None").non_test_ratio == 0.25
    for argv, line in [
        (["--non-test-ratio", "1:x"], "--non-test-ratio must be a fraction such as 0.2, 1/6 or 1:5"),
        (["--stages", "data", "trian"], "--stages item 2 must be one of data, split, baseline, search, train, merge, "
                                        "evaluate, got 'trian'; did you mean 'train'?"),
        (["--eval-workers", "0"], "--eval-workers must be >= 1, got 0"),
        (["--eval-top-k", "0"], "--eval-top-k must be >= 1, got 0"),
        (["--n-sample", "5"], "unknown flag --n-sample; did you mean --n-samples?"),
    ]:
        with pytest.raises(GemmaOcrError) as e:
            parse(*argv)
        assert str(e.value).startswith(line), (argv, str(e.value))
    config.write_text('{"eval_topk": 5}')
    with pytest.raises(GemmaOcrError, match=r"job.yaml: unknown key 'eval_topk'; did you mean 'eval_top_k'\?"):
        parse("--config", str(config))
    assert parse("--base-model", "google/gemma-3-4b-it").base_model == Path("google/gemma-3-4b-it")


def test_the_table_shows_no_figure_for_a_model_that_scored_nothing():
    """A results document with nothing scored (every request failed) is n/a in the main job's table, not 0.0000."""
    from gemma_ocr.pipeline.table import format_table
    from gemma_ocr.scoring.results import build_document

    failed = [{"image_path": f"/d/{i}.png", "label": "12", "prediction": None, "status": "error",
               "error": "HTTP 200, not JSON"} for i in range(3)]
    read = [{"image_path": f"/d/{i}.png", "label": "12", "prediction": "12", "status": "ok"} for i in range(3)]
    table = format_table({"base (m)": build_document(read, model_name="m"),
                          "fine-tuned (m)": build_document(failed, model_name="m")})
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert rows["base (m)"].split()[2] == "0.0000"
    assert rows["fine-tuned (m)"].split()[2:6] == ["n/a"] * 4 and "0.0000" not in rows["fine-tuned (m)"]


@pytest.mark.slow
def test_a_rerun_with_another_seed_keeps_the_earlier_study(tmp_path):
    """A search made from other inputs (here the seed) is redone, and the earlier study, its best configuration and
    its trials are kept under another name, never deleted."""
    import optuna

    config = json.loads((REPO / "configs/hyperparm_configs/default.json").read_text(encoding="utf-8"))
    config.update(max_steps=2, eval_steps=1, logging_steps=1, cer_eval_samples=2, per_device_eval_batch_size=2)
    (tmp_path / "train.json").write_text(json.dumps(config), encoding="utf-8")
    flags = ["--root", str(tmp_path), "--stages", "data", "split", "search", "--n-samples", "40", "--non-test-ratio", "0.5",
             "--search-trials", "1", "--train-config", str(tmp_path / "train.json")]
    run_cli("pipeline.py", *flags)
    studies = tmp_path / "optuna_studies"
    first = optuna.load_study(study_name="pipeline", storage=f"sqlite:///{studies / 'pipeline.db'}")
    first_params = first.trials[0].params
    out = run_cli("pipeline.py", *flags, "--seed", "7")
    kept = sorted(studies.glob("pipeline-*.db"))
    assert len(kept) == 1 and "kept as" in out.stderr, out.stderr
    earlier = optuna.load_study(study_name="pipeline", storage=f"sqlite:///{kept[0]}")
    assert [t.params for t in earlier.trials] == [first_params]
    assert len(sorted(studies.glob("pipeline_best_config-*.json"))) == 1
    assert (studies / "pipeline.db").is_file() and (studies / "pipeline_best_config.json").is_file()
