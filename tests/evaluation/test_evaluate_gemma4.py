"""evaluate.py and transcribe.py score a tiny Gemma 4 through the real embedded server, as they score Gemma 3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from tests.helpers.eval_fixtures import ROOT, answering_gemma4, eval_env

from gemma_ocr.data.records import load_records
from gemma_ocr.evaluation.client import build_request, encode_image
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.transcription import TranscribeConfig, transcribe
from gemma_ocr.scoring.metrics import aggregate, score_pairs
from gemma_ocr.serving.process import start_server

SAMPLES = 6
THINKING_ANSWER = ["<|channel>", "a", "b", "<channel|>", "H", "I", "<turn|>"]  # thinks "ab", answers "HI"


@pytest.fixture(scope="module")
def thinking_server(eval_gemma4, tmp_path_factory):
    """The embedded server on a tiny Gemma 4 that thinks before it answers, whatever it is asked."""
    folder = answering_gemma4(eval_gemma4, tmp_path_factory.mktemp("thinking") / "thinking-gemma4", THINKING_ANSWER)
    with start_server(folder, env=eval_env(), startup_timeout=180) as served:
        yield served


def test_evaluate_py_scores_a_served_gemma4_and_transcribe_gets_the_same_answers(gemma4_server, eval_data, tmp_path):
    url, name = gemma4_server
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "core/evaluate.py"), "--vllm-url", url + "/v1", "--data-file",
                        str(eval_data), "--output-file", str(out), "--top-k", str(SAMPLES), "--workers", "3",
                        "--max-tokens", "10", "--no-progress"], capture_output=True, text=True, env=eval_env(),
                       timeout=180)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["model_name"] == name == "tiny-gemma4"
    assert doc["total_samples"] == SAMPLES and doc["complete"] is True and doc["pending"] == 0
    labels = [rec.text for rec in load_records(eval_data)[:SAMPLES]]
    assert [s["label"] for s in doc["samples"]] == labels
    for s in doc["samples"]:
        assert s["status"] in ("ok", "empty", "truncated", "repetition") and s["finish_reason"] in ("stop", "length")
        assert (s["status"] == "empty") == (s["prediction"].strip() == "")
        assert (s["status"] == "truncated") == (s["finish_reason"] == "length" and s["status"] != "repetition")
        assert 0 <= s["cer_score"] and s["min_logprob"] <= s["mean_logprob"] <= 0
        assert "thought" not in s["prediction"] and "<|" not in s["prediction"]
    scores = score_pairs([s["prediction"] for s in doc["samples"]], labels)
    assert doc["overall_cer"] == pytest.approx(aggregate(scores).cer_micro)

    rows = transcribe(TranscribeConfig(urls=[url], inputs=[str(eval_data)], output_file=tmp_path / "t.jsonl",
                                       max_tokens=10, workers=2, show_progress=False)).rows
    assert [row["text"] for row in rows[:SAMPLES]] == [s["prediction"] for s in doc["samples"]]
    assert all(row["model"] == name for row in rows)


def test_a_gemma4_that_thinks_is_scored_on_its_answer_alone(thinking_server, eval_data, tmp_path):
    """Its thinking channel reaches neither evaluate.py's predictions (status ok, CER of "HI") nor a stream."""
    url, name = thinking_server
    doc = evaluate(EvalConfig(urls=[url], data_file=eval_data, output_file=tmp_path / "r.json", top_k=3,
                              max_tokens=12, show_progress=False)).document
    labels = [rec.text for rec in load_records(eval_data)[:3]]
    assert doc["model_name"] == name and [s["prediction"] for s in doc["samples"]] == ["HI"] * 3
    assert {(s["status"], s["finish_reason"]) for s in doc["samples"]} == {("ok", "stop")}
    assert [s["cer_score"] for s in doc["samples"]] == pytest.approx([p.cer for p in score_pairs(["HI"] * 3, labels)])
    body = build_request(name, encode_image(load_records(eval_data)[0].image_path), "OCR", 12)
    whole = requests.post(url + "/v1/chat/completions", json=body, timeout=60).json()
    assert whole["usage"]["completion_tokens"] == len(THINKING_ANSWER)  # the thinking is generated, not answered
    with requests.post(url + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "HI"
