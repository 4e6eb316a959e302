"""Degenerate answers are named (truncated, repetition), counted apart and still scored; confidence is recorded."""

from __future__ import annotations

import json
import math
from string import ascii_letters

import pytest
import requests
from tests.helpers.eval_fixtures import ScriptedServer, write_data
from PIL import Image

from gemma_ocr.scoring.degenerate import LOOP_MAX_UNIT, answer_status, find_loop
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.client import build_request, encode_image, parse_answer
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.evaluation.transcription import TranscribeConfig, transcribe


@pytest.mark.parametrize("text, unit", [
    ("Total: 12 12 12 12 12 12 12 1", " 12"),  # cut inside the last copy
    ("a" * 20, "a"),
    ("Invoice 2024-03-01 " + "the " * 6, " the"),  # the run starts at the first repeated character
    ("x" * 7 + "0123456789" * 4 + " end", "0123456789"),  # in the middle, then something else
    ("ab" * 10, "ab"),
    ("é" * 25, "é"),
    ("start " + ascii_letters[:LOOP_MAX_UNIT] * 4, ascii_letters[:LOOP_MAX_UNIT]),
])
def test_the_loop_rule_finds_runs(text, unit):
    loop = find_loop(text)
    assert loop is not None and loop.unit == unit and loop.copies >= 4 and loop.length >= 20


@pytest.mark.parametrize("text", [
    "a" * 19,  # too few characters
    "abcdefgh" * 3,  # three copies only
    "0000000000",  # a long digit run is still a line's content
    "Total: 12,345.67 due 2024-03-01, thank you for your business",
    ascii_letters[:LOOP_MAX_UNIT + 1] * 4,  # the piece is longer than 50 characters
    "",
    None,
])
def test_the_loop_rule_leaves_text_alone(text):
    assert find_loop(text) is None


def test_answer_status_rule():
    assert answer_status("ab " * 10, "length") == "repetition"  # a loop wins over the cut
    assert answer_status("ab " * 10, "stop") == "repetition"
    assert answer_status("Total 12", "length") == "truncated"
    assert answer_status("Total 12", "stop") == answer_status("Total 12", None) == "ok"
    assert answer_status("  \n", "length") == "empty"
    dots = "Chapter 1 " + "." * 30 + " 7"
    assert answer_status(dots, "stop", reference=dots) == "ok"  # the reference has the run too
    assert answer_status(dots, "stop", reference="Chapter 1 7") == "repetition"


def _cfg(url, data, out, **kw) -> EvalConfig:
    kw.setdefault("show_progress", False)
    kw.setdefault("model_name", "m")
    return EvalConfig(urls=[url], data_file=data, output_file=out, top_k=None, **kw)


def test_truncated_answers_of_the_embedded_server_are_named_and_scored(tiny_server, eval_data, tmp_path):
    url, _ = tiny_server
    doc = evaluate(_cfg(url, eval_data, tmp_path / "r.json", max_tokens=3, model_name=None, workers=4)).document
    counts = doc["status_counts"]
    assert counts["truncated"] >= 10 and counts["error"] == 0  # 3 tokens cut nearly every line of a random model
    for s in doc["samples"]:
        assert s["finish_reason"] in ("length", "stop")
        assert s["status"] != "truncated" or s["finish_reason"] == "length"
        assert s["cer_score"] is not None and s["min_logprob"] <= s["mean_logprob"] <= 0
    assert doc["status_rules"]["truncated"].startswith("cut at max_tokens")
    assert doc["total_samples"] == 12 and doc["overall_cer"] > 0  # every answer scored


def test_a_repetition_loop_of_the_embedded_server_is_named(tiny_server, merged_model, eval_data):
    """A bias on one token makes the real model repeat it until max_tokens."""
    from transformers import AutoTokenizer

    from gemma_ocr.data.records import load_records

    url, name = tiny_server
    token = AutoTokenizer.from_pretrained(merged_model[0]).convert_tokens_to_ids("a")
    body = {**build_request(name, encode_image(load_records(eval_data)[0].image_path), "OCR", 24, logprobs=True),
            "logit_bias": {str(token): 100}}
    answer = parse_answer(requests.post(url + "/v1/chat/completions", json=body, timeout=60).json())
    assert answer.text == "a" * 24 and answer.finish_reason == "length" and len(answer.logprobs) == 24
    assert answer_status(answer.text, answer.finish_reason) == "repetition"


LOOP = "Total 12 12 12 12 12 12 12 12"
CRAFTED = [  # in the order the four samples are asked for (one worker)
    {"content": LOOP, "finish_reason": "length", "logprobs": [-0.1, -3.0, -0.2]},
    {"content": "Total", "finish_reason": "length", "logprobs": [-0.5]},
    {"content": "Total 12", "finish_reason": "stop", "logprobs": [-0.01, -0.02]},
    {"content": "." * 24, "finish_reason": "stop"},
]


def test_crafted_degenerate_answers_are_counted_apart_scored_and_kept_on_resume(tmp_path):
    data = write_data(tmp_path / "d.json", [("a.png", "Total 12"), ("b.png", "Total 12"), ("c.png", "Total 12"),
                                            ("d.png", "." * 24)])
    for name in "abcd":
        Image.new("RGB", (40, 20), "white").save(tmp_path / f"{name}.png")
    out = tmp_path / "r.json"
    with ScriptedServer([], answers=list(CRAFTED)) as s:
        doc = evaluate(_cfg(s.url, data, out, workers=1)).document
        assert [b.get("logprobs") for b in s.bodies] == [True] * 4
        assert [x["status"] for x in doc["samples"]] == ["repetition", "truncated", "ok", "ok"]  # d: the label's run
        assert doc["status_counts"] == {"ok": 2, "empty": 0, "truncated": 1, "repetition": 1, "error": 0}
        first = doc["samples"][0]
        assert first["finish_reason"] == "length" and first["cer_score"] > 1  # scored as it is
        assert first["mean_logprob"] == pytest.approx(-3.3 / 3) and first["min_logprob"] == -3.0
        assert "mean_logprob" not in doc["samples"][3]  # the server gave none for it
        assert "repetition loop" in doc["status_rules"]["repetition"]
        again = evaluate(_cfg(s.url, data, out, workers=1))
        assert again.requested == 0 and again.resumed == 4  # finished answers, not failures
    assert json.loads(out.read_text())["status_counts"]["repetition"] == 1


def test_retry_at_a_higher_temperature_keeps_a_better_answer(tmp_path):
    for name in "ab":
        Image.new("RGB", (40, 20), "white").save(tmp_path / f"{name}.png")
    data = write_data(tmp_path / "d.json", [("a.png", "Total 12"), ("b.png", "Total 12")])
    answers = [{"content": LOOP, "finish_reason": "length"}, {"content": "Total 12", "finish_reason": "stop"},
               {"content": LOOP, "finish_reason": "length"}, {"content": LOOP + " 1", "finish_reason": "length"}]
    with ScriptedServer([], answers=answers) as s:
        doc = evaluate(_cfg(s.url, data, tmp_path / "r.json", workers=1, retry_temperature=0.7)).document
        assert [b["temperature"] for b in s.bodies] == [0.0, 0.7, 0.0, 0.7]
        with pytest.raises(GemmaOcrError, match="made with --retry-temperature 0.7, not None"):  # resumed otherwise
            evaluate(_cfg(s.url, data, tmp_path / "r.json"))
    kept, failed = doc["samples"]
    assert kept["prediction"] == "Total 12" and kept["status"] == "ok" and kept["cer_score"] == 0
    assert kept["retry"]["kept"] == "retry" and kept["retry"]["first"]["status"] == "repetition"
    assert failed["prediction"] == LOOP and failed["status"] == "repetition" and failed["retry"]["kept"] == "first"
    assert failed["retry"]["retry"]["prediction"] == LOOP + " 1"
    assert doc["generation"]["retry_temperature"] == 0.7
    with pytest.raises(GemmaOcrError, match="--retry-temperature must be a temperature above 0"):
        evaluate(_cfg("http://127.0.0.1:9", data, tmp_path / "x.json", retry_temperature=0))


def test_a_server_that_refuses_logprobs_is_asked_without(tmp_path, caplog):
    for name in "abc":
        Image.new("RGB", (40, 20), "white").save(tmp_path / f"{name}.png")
    data = write_data(tmp_path / "d.json", [(f"{name}.png", "hello") for name in "abc"])
    with ScriptedServer([], refuse_logprobs=True) as s:
        doc = evaluate(_cfg(s.url, data, tmp_path / "r.json", workers=1)).document
        assert s.requests == 4 and [bool(b.get("logprobs")) for b in s.bodies] == [True, False, False, False]
    assert [x["status"] for x in doc["samples"]] == ["ok"] * 3 and all("mean_logprob" not in x for x in doc["samples"])
    assert "refused logprobs" in caplog.text


def test_transcribe_marks_low_confidence_and_degenerate_lines_for_review(tmp_path):
    for name in "abcd":
        Image.new("RGB", (40, 20), "white").save(tmp_path / f"{name}.png")
    answers = [{"content": "Total 12", "finish_reason": "stop", "logprobs": [-0.01, -2.0]},  # one token at p=0.14
               {"content": "Total 12", "finish_reason": "stop", "logprobs": [-0.01, -0.05]},
               {"content": "Total", "finish_reason": "length", "logprobs": [-0.01]},
               {"content": LOOP, "finish_reason": "length", "logprobs": [-0.01]}]
    out = tmp_path / "t.jsonl"
    cfg = TranscribeConfig(urls=[""], inputs=[str(tmp_path / f"{n}.png") for n in "abcd"], output_file=str(out),
                           workers=1, show_progress=False, review_below=0.5)
    with ScriptedServer([], answers=answers) as s:
        cfg.urls = [s.url]
        result = transcribe(cfg)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        cfg.review_below = 0.1  # a rerun with another threshold marks the kept lines again, asking nothing
        again = transcribe(cfg)
    assert [r["status"] for r in rows] == ["ok", "ok", "truncated", "repetition"]
    assert [bool(r.get("review")) for r in rows] == [True, False, True, True] and result.to_review == 3
    assert rows[0]["min_logprob"] == -2.0 and math.exp(rows[1]["min_logprob"]) > 0.5
    assert rows[2]["finish_reason"] == "length"
    assert again.requested == 0 and [bool(r.get("review")) for r in again.rows] == [False, False, True, True]


def test_the_error_report_counts_statuses_and_plots_cer_against_confidence(tmp_path, synthetic_raw):
    from tests.helpers.programs import run_cli
    from gemma_ocr.data.records import load_raw_records
    from gemma_ocr.io import atomic_write_json
    from gemma_ocr.scoring.results import build_document

    records = load_raw_records(synthetic_raw)
    samples = []
    for i, r in enumerate(records):
        s = {"index": i, "image_path": r.image_path, "label": r.text, "prediction": r.text, "status": "ok",
             "finish_reason": "stop", "min_logprob": -0.01 * (i % 3), "mean_logprob": -0.005}
        if i % 10 == 1:  # a loop: wrong and unsure
            s.update(prediction=r.text + " 12" * 10, status="repetition", finish_reason="length", min_logprob=-4.0)
        elif i % 10 == 2:
            s.update(prediction=r.text[:2], status="truncated", finish_reason="length", min_logprob=-2.5)
        samples.append(s)
    samples[5].pop("min_logprob")  # a sample without log-probabilities is left out of the plot only
    atomic_write_json(tmp_path / "r.json", build_document(samples, "m"))
    proc = run_cli("error_analysis.py", str(tmp_path / "r.json"), "--output-dir", str(tmp_path / "report"))
    n_loop, n_cut = len(records[1::10]), len(records[2::10])
    assert f"statuses: ok {len(records) - n_loop - n_cut}, empty 0, truncated {n_cut}, repetition {n_loop}, error 0" \
        in proc.stdout
    summary = json.loads((tmp_path / "report/summary.json").read_text(encoding="utf-8"))
    assert summary["status_counts"]["repetition"] == n_loop and summary["status_counts"]["truncated"] == n_cut
    assert (tmp_path / "report/cer_vs_confidence.png").stat().st_size > 1000
    page = (tmp_path / "report/report.html").read_text(encoding="utf-8")
    assert "<th>truncated</th><th>repetition</th>" in page and 'alt="cer_vs_confidence"' in page
    assert any(w["status"] == "repetition" for w in summary["worst"])  # the worst samples say what they are
