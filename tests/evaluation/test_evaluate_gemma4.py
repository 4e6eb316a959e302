"""evaluate.py and transcribe.py score a tiny Gemma 4 through the real embedded server, as they score Gemma 3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.helpers.eval_fixtures import ROOT, eval_env

from gemma_ocr.data.records import load_records
from gemma_ocr.evaluation.transcription import TranscribeConfig, transcribe
from gemma_ocr.scoring.metrics import aggregate, score_pairs

SAMPLES = 6


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
