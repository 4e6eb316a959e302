"""tune() end to end on the tiny Gemma 3 and synthetic data: learning, outputs, tracking, callbacks, resume, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from gemma_ocr.training.config import TrainConfig
from gemma_ocr.data.records import load_records, write_records
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.training.tune import CONFIG_FILE, METRICS_FILE, tune
from gemma_ocr.training.tracking import read_offline_wandb_history
from tests.helpers.output_locations import small_tmpfs
from tests.helpers.sft_fixtures import ROOT, needs_4bit, ocr_data, sft_env, tiny_model_dir, one_torch_thread  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]




class RecordingCallback(TrainerCallback):
    """Reads eval metrics in on_evaluate, like the search's pruning callback."""

    def __init__(self):
        self.seen: list[tuple[int, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.seen.append((state.global_step, metrics["eval_loss"]))


class Pruned(Exception):
    pass


class PruneAtFirstEval(TrainerCallback):
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        raise Pruned(f"pruned at step {state.global_step} with eval_loss {metrics['eval_loss']:.3f}")


def small_config(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model_name=str(model_dir), input_data=str(data), output_dir=str(out), learning_rate=5e-3,
                max_steps=8, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                gradient_accumulation_steps=1, eval_steps=4, save_steps=4, logging_steps=2, warmup_ratio=0.0,
                train_split="train[:80%]", val_split="train[80%:]", seed=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, ocr_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run") / "adapter"
    recorder = RecordingCallback()
    config = small_config(tiny_model_dir, ocr_data, out, report_to=["wandb", "tensorboard"],
                          wandb_project="gemma-ocr-tests", wandb_group="sft-tests", run_name="tiny-run")
    result = tune(config, callbacks=[recorder])
    return config, result, recorder


def test_training_lowers_eval_loss(trained):
    _, result, _ = trained
    assert result["global_step"] == 8
    assert result["first_eval_loss"] is not None and result["eval_loss"] is not None
    assert result["eval_loss"] < result["first_eval_loss"] - 0.02, result
    assert result["train_loss"] > 0 and result["world_size"] == 1
    steps = [e["step"] for e in result["history"] if "eval_loss" in e]
    assert steps == [0, 4, 8]


def test_outputs_saved(trained):
    config, result, _ = trained
    out = Path(result["output_dir"])
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "processor_config.json",
                 "chat_template.jinja", CONFIG_FILE, METRICS_FILE):
        assert (out / name).is_file(), name
    assert json.loads((out / CONFIG_FILE).read_text()) == config.to_dict()
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["eval_loss"] == pytest.approx(result["eval_loss"])
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == config.lora_r and "language_model" in adapter["target_modules"]
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()


def test_adapter_loads_on_a_fresh_base_and_generates(trained):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config, result, _ = trained
    processor = AutoProcessor.from_pretrained(result["output_dir"])
    base = AutoModelForImageTextToText.from_pretrained(config.model_name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, result["output_dir"]).eval()
    record = load_records(config.input_data)[0]
    from gemma_ocr.data.images import open_image
    from gemma_ocr.training.data import build_conversation

    inputs = processor.apply_chat_template(build_conversation(open_image(record.image_path), None, config.instruction),
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_callbacks_read_eval_metrics(trained):
    _, result, recorder = trained
    assert [s for s, _ in recorder.seen] == [0, 4, 8]
    assert recorder.seen[-1][1] == pytest.approx(result["eval_loss"])


def test_wandb_offline_run_holds_the_metrics(trained):
    config, result, _ = trained
    runs = list((Path(config.output_dir) / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    rows = read_offline_wandb_history(runs[0])
    eval_rows = [r for r in rows if "eval/loss" in r]
    assert [r["train/global_step"] for r in eval_rows] == [0, 4, 8]
    assert eval_rows[-1]["eval/loss"] == pytest.approx(result["eval_loss"])
    assert eval_rows[-1]["eval/cer"] == pytest.approx(result["eval_cer"])  # the CER evaluation is logged beside it
    assert any("train/loss" in r for r in rows)


def test_tensorboard_events_written(trained):
    config, _, _ = trained
    events = list((Path(config.output_dir) / "runs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "eval/loss" in acc.Tags()["scalars"]


def test_resume_continues_from_the_saved_step(trained, tmp_path):
    config, _, _ = trained
    out = tmp_path / "resumed"
    shutil.copytree(config.output_dir, out, ignore=shutil.ignore_patterns("wandb", "runs"))
    shutil.rmtree(out / "checkpoint-8")  # as if interrupted after step 4
    resumed = config.replace(output_dir=str(out), report_to=["none"], resume_from_checkpoint=True)
    result = tune(resumed)
    assert Path(result["resumed_from"]).name == "checkpoint-4"
    assert result["global_step"] == 8
    steps = [e["step"] for e in result["history"] if "loss" in e]
    assert steps[0] < 4 and steps[-1] == 8  # history before the checkpoint was restored
    assert result["first_eval_loss"] == pytest.approx(trained[1]["first_eval_loss"])


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(trained, tmp_path, caplog):
    """Killed while saving checkpoint-8 (weights half written, no trainer_state.json): resumes from checkpoint-4."""
    config, _, _ = trained
    out = tmp_path / "killed"
    shutil.copytree(config.output_dir, out, ignore=shutil.ignore_patterns("wandb", "runs"))
    weights = out / "checkpoint-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
        (out / "checkpoint-8" / name).unlink(missing_ok=True)
    with caplog.at_level("WARNING", logger="gemma_ocr.training.tune"):
        result = tune(config.replace(output_dir=str(out), report_to=["none"], resume_from_checkpoint=True))
    assert Path(result["resumed_from"]).name == "checkpoint-4" and result["global_step"] == 8
    assert "skipped checkpoint-8 (no trainer_state.json: the run stopped while saving it); resuming from checkpoint-4" \
        in caplog.text
    with pytest.raises(GemmaOcrError, match="checkpoint-3: not a complete training checkpoint \\(no such folder\\)"):
        tune(config.replace(output_dir=str(out), report_to=["none"], resume_from_checkpoint=str(out / "checkpoint-3")))


def test_a_disk_that_fills_while_training_is_one_line_and_the_run_resumes(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    """A full disk at the second checkpoint: one line naming the step, the folder and the complete checkpoint to
    resume from; with room again, --resume goes on from it (torch.save says only "iostream error" there)."""
    with small_tmpfs(tmp_path / "small", size="800k") as small:
        out = small / "adapter"
        config = small_config(tiny_model_dir, ocr_data, out, report_to=["none"])
        with pytest.raises(GemmaOcrError) as err:
            tune(config)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"training stopped at step 8: cannot write in {out} "
                                                          "(no space left on device"), message
        assert message.endswith(f"the newest complete checkpoint is {out / 'checkpoint-4'}; free space, then rerun "
                                "with --resume to go on from it"), message
        subprocess.run(["mount", "-o", "remount,size=8m", str(small)], check=True)
        result = tune(config.replace(resume_from_checkpoint=True))
        assert Path(result["resumed_from"]).name == "checkpoint-4" and result["global_step"] == 8
        assert (out / "adapter_model.safetensors").is_file() and (out / METRICS_FILE).is_file()


def test_pruning_exception_propagates(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    config = small_config(tiny_model_dir, ocr_data, tmp_path / "pruned")
    with pytest.raises(Pruned, match="pruned at step 0"):
        tune(config, callbacks=[PruneAtFirstEval()])


def test_torch_threads_hold_while_training_and_are_restored(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    import torch

    class ThreadsAtFirstEval(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            raise Pruned(f"{torch.get_num_threads()} threads")

    before = torch.get_num_threads()
    with pytest.raises(Pruned, match="^2 threads$"):
        tune(small_config(tiny_model_dir, ocr_data, tmp_path / "threads", torch_threads=2),
             callbacks=[ThreadsAtFirstEval()])
    assert torch.get_num_threads() == before == 1
    with pytest.raises(Pruned, match="^1 threads$"):  # 0: torch's setting is left alone
        tune(small_config(tiny_model_dir, ocr_data, tmp_path / "default"), callbacks=[ThreadsAtFirstEval()])


def test_bad_inputs_are_one_clear_line(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    def fails(config, pattern):
        with pytest.raises(GemmaOcrError, match=pattern) as err:
            tune(config)
        assert "\n" not in str(err.value)

    fails(small_config(tiny_model_dir, ocr_data, tmp_path / "a", train_split="train[:0%]"),
          r"the train split 'train\[:0%\]' is empty")
    fails(small_config(tiny_model_dir, tmp_path / "none.json", tmp_path / "a"), "OCR data file not found")
    records = load_records(ocr_data)[:6]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad_data = tmp_path / "bad.json"
    write_records([records[0].__class__(str(broken), "x"), *records[1:]], bad_data)
    fails(small_config(tiny_model_dir, bad_data, tmp_path / "a"), "image cannot be read")
    not_gemma = tmp_path / "llama"
    not_gemma.mkdir()
    (not_gemma / "config.json").write_text(json.dumps({"model_type": "llama"}))
    fails(small_config(not_gemma, ocr_data, tmp_path / "a"), "is not a supported vision-language model")


@pytest.mark.parametrize("model_name", ["models/tiny-gemma3-reader", "models/tiny-gemma3"])
def test_a_missing_model_is_one_line_and_nothing_is_built(tmp_path, monkeypatch, model_name):
    """The production path never builds a random model, whatever the folder is called."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GemmaOcrError, match="neither a local folder nor a reachable hub id") as err:
        tune(TrainConfig(model_name=model_name))
    assert "\n" not in str(err.value) and "models/tiny-gemma3-reader" in str(err.value)
    assert not (tmp_path / "models").exists()


def test_accelerate_two_cpu_processes(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    """Data-parallel on 2 CPU processes (gloo DDP) with no program change."""
    records = load_records(ocr_data)[:12]
    data = tmp_path / "data.json"
    write_records(records, data)
    env = sft_env()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "core/sft_gemma.py"), "--model-name", str(tiny_model_dir), "--input-data", str(data),
           "--lora-output-dir", "out",
           "--max-steps", "2", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
           "--eval-steps", "2", "--save-steps", "2", "--logging-steps", "1", "--train-split", "train[:10]",
           "--val-split", "train[10:]", "--learning-rate", "5e-3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / METRICS_FILE).read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_step"] == 2
    # 10 training samples, 2 per process per step, 2 processes: one step is 4 samples = 0.4 epoch (0.2 if alone)
    assert metrics["epoch"] == pytest.approx(2 / 3, abs=0.01)
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
    assert "eval_loss:" in proc.stdout


@needs_4bit
def test_qlora_4bit_training_then_merge(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    """nf4 QLoRA (CUDA, or bitsandbytes' CPU kernels) learns; its adapter merges into the 16-bit base and verifies."""
    from gemma_ocr.merge.adapter import lora_keys, merge_adapter

    out = tmp_path / "q"
    result = tune(small_config(tiny_model_dir, ocr_data, out, load_in_4bit=True))
    assert result["eval_loss"] < result["first_eval_loss"]
    assert json.loads((out / CONFIG_FILE).read_text())["load_in_4bit"] is True
    report = merge_adapter(out, tmp_path / "merged")
    assert report.verified and report.max_abs_diff <= report.tolerance and lora_keys(tmp_path / "merged") == []
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_lora_training_on_gpu(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    result = tune(small_config(tiny_model_dir, ocr_data, tmp_path / "g"))
    assert result["eval_loss"] < result["first_eval_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unsloth_backend_on_gpu(tiny_model_dir, ocr_data, tmp_path):  # noqa: F811
    pytest.importorskip("unsloth")
    result = tune(small_config(tiny_model_dir, ocr_data, tmp_path / "u", backend="unsloth"))
    assert result["eval_loss"] is not None
