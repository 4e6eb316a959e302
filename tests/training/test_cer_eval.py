"""CER of generated text during training, on the shipped tiny reader learning a font it was not pretrained on:
eval_cer falls and is logged, the best checkpoint by CER is the output, early stopping, the figure equals
evaluate.py's through the served model, pan-and-scan reaches the processor, the merge and vLLM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gemma_ocr.training.config import TrainConfig
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT
from gemma_ocr.training.tune import METRICS_FILE, tune
from gemma_ocr.training.cer_eval import CER_METRICS
from tests.helpers.sft_fixtures import ROOT, needs_4bit, one_torch_thread  # noqa: F401

READER = ROOT / LAYOUT.reader
EVAL_KEYS = [f"eval_{m}" for m in CER_METRICS]


@pytest.fixture(scope="module")
def serif_digits(tmp_path_factory) -> Path:
    """224 lines of digits in Noto Serif (the main job's shift: the reader was pretrained on Noto Sans)."""
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SHIFTED_DIGITS, generate_dataset

    root = tmp_path_factory.mktemp("serif")
    records = generate_dataset(root / "raw", dataclasses.replace(SHIFTED_DIGITS, n_samples=224, seed=11))
    return write_records(records, root / "data.json")


def reader_run(data: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(model_name=str(READER), input_data=str(data), output_dir=str(out), learning_rate=5e-3,
                    max_steps=40, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                    gradient_accumulation_steps=1, eval_steps=8, save_steps=8, logging_steps=8, warmup_ratio=0.0,
                    train_split="train[:200]", val_split="train[200:]", finetune_vision_layers=True, seed=1,
                    cer_eval_samples=24, report_to=["none"])
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def best_by_cer(serif_digits, tmp_path_factory, one_torch_thread):  # noqa: F811
    out = tmp_path_factory.mktemp("cer") / "adapter"
    config = reader_run(serif_digits, out, metric_for_best_model="eval_cer", save_total_limit=None,
                        report_to=["tensorboard"])
    return config, tune(config)


def evaluations(result) -> list[dict]:
    return [e for e in result["history"] if "eval_loss" in e]


@pytest.mark.slow
def test_a_short_training_logs_a_falling_eval_cer(best_by_cer):
    config, result = best_by_cer
    evals = evaluations(result)
    assert [e["step"] for e in evals] == list(range(0, 41, 8))
    assert all(set(EVAL_KEYS) <= set(e) and e["eval_cer_runtime"] > 0 for e in evals)
    first, last = evals[0]["eval_cer"], evals[-1]["eval_cer"]
    assert result["first_eval_cer"] == first > 0.1 and last < first - 0.03, [e["eval_cer"] for e in evals]
    assert all(0 <= e["eval_f1"] <= 1 for e in evals)
    saved = json.loads((Path(config.output_dir) / METRICS_FILE).read_text())
    assert [e["eval_cer"] for e in evaluations(saved)] == [e["eval_cer"] for e in evals]
    assert saved["cer_eval_samples"] == 24 and saved["cer_eval_max_tokens"] >= 2 * 4 + 16

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(Path(config.output_dir).joinpath("runs").rglob("events.out.*")).parent))
    events.Reload()
    assert [round(s.value, 5) for s in events.Scalars("eval/cer")] == [round(e["eval_cer"], 5) for e in evals]


@pytest.mark.slow
def test_the_best_checkpoint_by_cer_is_the_output(best_by_cer):
    config, result = best_by_cer
    candidates = [e for e in evaluations(result) if e["step"] > 0]  # the evaluation before training saves nothing
    best = min(candidates, key=lambda e: e["eval_cer"])  # the first of equal ones, as the Trainer keeps it
    assert result["best_global_step"] == result["eval_step"] == best["step"]
    assert result["eval_cer"] == best["eval_cer"] == result["best_metric"]
    assert result["eval_loss"] == best["eval_loss"] and result["metric_for_best_model"] == "eval_cer"
    out = Path(config.output_dir)
    kept, final = load_file(str(out / f"checkpoint-{best['step']}" / "adapter_model.safetensors")), \
        load_file(str(out / "adapter_model.safetensors"))
    assert kept.keys() == final.keys() and all(torch.equal(kept[k], final[k]) for k in kept)
    # on this run the loss falls to the end while CER is best earlier: the output really is a chosen one
    assert best["step"] != 40 and min(evaluations(result), key=lambda e: e["eval_loss"])["step"] == 40
    last = load_file(str(out / "checkpoint-40" / "adapter_model.safetensors"))
    assert any(not torch.equal(last[k], final[k]) for k in final)


@pytest.mark.slow
def test_early_stopping_stops_when_cer_stops_improving(serif_digits, tmp_path, one_torch_thread):  # noqa: F811
    """With a threshold no change reaches, the second scored evaluation counts as no improvement: stop there."""
    result = tune(reader_run(serif_digits, tmp_path / "early", max_steps=40, eval_steps=2, save_steps=2,
                             cer_eval_samples=8, metric_for_best_model="eval_cer", early_stopping_patience=1,
                             early_stopping_threshold=10.0))
    assert result["global_step"] == 4 and result["early_stopped"]
    assert [e["step"] for e in evaluations(result)] == [0, 2, 4]


@pytest.mark.slow
def test_the_cer_equals_evaluate_py_through_the_served_model(serif_digits, tmp_path, one_torch_thread):  # noqa: F811
    """Full training (its output folder is the model itself): the last evaluation's figures are evaluate.py's on
    the same validation images through the embedded server, at the same --max-tokens."""
    from gemma_ocr.data.records import load_records, write_records
    from gemma_ocr.evaluation.settings import EvalConfig
    from gemma_ocr.evaluation.run import evaluate
    from gemma_ocr.serving.process import start_server
    from tests.helpers.eval_fixtures import eval_env

    out = tmp_path / "full"
    result = tune(reader_run(serif_digits, out, train_mode="full", learning_rate=1e-3, max_steps=4,
                             eval_on_start=False, cer_eval_samples=12, gradient_checkpointing=False))
    last = evaluations(result)[-1]
    assert last["step"] == 4 and set(EVAL_KEYS) <= set(last)
    sliced = write_records(load_records(serif_digits)[200:212], tmp_path / "val12.json")
    with start_server(out, env=eval_env(), startup_timeout=180) as (url, name):
        doc = evaluate(EvalConfig(urls=[url], model_name=name, data_file=sliced, output_file=tmp_path / "r.json",
                                  top_k=None, workers=2, max_tokens=result["cer_eval_max_tokens"],
                                  show_progress=False)).document
    assert doc["status_counts"]["error"] == 0
    assert doc["overall_cer"] == pytest.approx(last["eval_cer"], abs=1e-9) and 0 < doc["overall_cer"] < 1
    assert doc["overall_f1"] == pytest.approx(last["eval_f1"], abs=1e-9)
    assert doc["normalized_overall_cer"] == pytest.approx(last["eval_normalized_cer"], abs=1e-9)
    assert doc["normalized_overall_f1"] == pytest.approx(last["eval_normalized_f1"], abs=1e-9)


@needs_4bit
@pytest.mark.slow
def test_4bit_training_logs_eval_cer(serif_digits, tmp_path, one_torch_thread):  # noqa: F811
    result = tune(reader_run(serif_digits, tmp_path / "q", load_in_4bit=True, max_steps=2, eval_steps=2, save_steps=2,
                             cer_eval_samples=8))
    assert [e["step"] for e in evaluations(result)] == [0, 2]
    assert all(0 <= e["eval_cer"] for e in evaluations(result)) and result["eval_cer"] is not None


def test_the_best_metric_direction_and_the_checks_up_front():
    from gemma_ocr.training.tune import sft_arguments

    for metric, higher in (("eval_cer", False), ("eval_normalized_cer", False), ("eval_f1", True), ("eval_loss", False)):
        args = sft_arguments(TrainConfig(metric_for_best_model=metric), [], has_eval=True, resuming=False)
        assert (args.greater_is_better, args.load_best_model_at_end) == (higher, True), metric
    args = sft_arguments(TrainConfig(metric_for_best_model="eval_cer", greater_is_better=True,
                                     load_best_model_at_end=False), [], has_eval=True, resuming=False)
    assert (args.greater_is_better, args.load_best_model_at_end) == (True, False)  # as set
    assert sft_arguments(TrainConfig(), [], has_eval=True, resuming=False).load_best_model_at_end is False

    for change, fragment in (
            ({"metric_for_best_model": "eval_cer", "cer_eval_samples": 0}, "'eval_cer' comes from the CER evaluation, "
                                                                           "but cer_eval_samples is 0"),
            ({"metric_for_best_model": "cer", "val_split": ""}, "but there is no val_split"),
            ({"early_stopping_patience": 2}, "'early_stopping_patience' watches metric_for_best_model, which is not set"),
            ({"cer_eval_samples": -1}, "'cer_eval_samples' must be >= 0"),
            ({"metric_for_best_model": "eval_wer"}, "'eval_wer' is not a metric of the evaluation .*; did you mean "
                                                    "'eval_cer'"),
            ({"pan_and_scan_min_crop_size": 0}, "'pan_and_scan_min_crop_size' must be >= 1")):
        with pytest.raises(GemmaOcrError, match=fragment):
            TrainConfig.from_dict(change)


@pytest.mark.slow
def test_pan_and_scan_reaches_training_the_merged_folder_and_vllm(serif_digits, tmp_path,
                                                                  one_torch_thread):  # noqa: F811
    """A long line becomes the whole image and 2 crops in the training batches, in the saved adapter's processor,
    in the merged model's processor config (and its reload), and on vLLM's command line; cer_eval_samples 0: no CER."""
    from transformers import AutoProcessor

    from gemma_ocr.data.images import open_image
    from gemma_ocr.data.records import load_records
    from gemma_ocr.merge.adapter import merge_adapter
    from gemma_ocr.serving.process import VllmInstall, vllm_command
    from gemma_ocr.training.data import load_data
    from gemma_ocr.training.tune import build_trainer

    pas = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16, "pan_and_scan_max_num_crops": 2}
    config = reader_run(serif_digits, tmp_path / "pas", max_steps=2, eval_steps=2, save_steps=2, cer_eval_samples=0,
                        **pas)
    record = load_records(serif_digits)[0]
    image = open_image(record.image_path)
    assert image.width / image.height > 2  # a long line: pan-and-scan crops it

    trainer, _ = build_trainer(config, *load_data(config))
    assert trainer.data_collator([{"image_path": record.image_path, "text": record.text}])["pixel_values"].shape[0] == 3
    assert trainer.cer_evaluation is None
    del trainer

    result = tune(config)
    assert not any("eval_cer" in e for e in result["history"]) and result["eval_loss"] is not None

    def crops(folder) -> int:
        processor = AutoProcessor.from_pretrained(folder)
        batch = processor.apply_chat_template([{"role": "user", "content": [{"type": "image", "image": image},
                                                                            {"type": "text", "text": "x"}]}],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(batch["pixel_values"]) - 1

    assert crops(config.output_dir) == 2
    merged = tmp_path / "merged"
    merge_adapter(config.output_dir, merged, check_free_disk=False)
    saved = json.loads((merged / "processor_config.json").read_text())["image_processor"]
    assert {k: saved[k] for k in pas} == pas and crops(merged) == 2

    install = VllmInstall("/opt/vllm/bin/python", "vllm", "0.32.0", cpu=False)
    cmd = vllm_command(install, merged, 8000, "127.0.0.1", "m", None, 4096)
    assert json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1]) == pas
    assert "--mm-processor-kwargs" not in vllm_command(install, READER, 8000, "127.0.0.1", "m", None, 4096)
