"""evaluate.py against the real embedded server: results layout, top-k, save interval, bad images, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import requests
from tests.helpers.eval_fixtures import ROOT, ScriptedServer, eval_env, write_data

from gemma_ocr.data.records import load_records
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.client import parse_url
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.scoring.metrics import aggregate, score_pairs
from gemma_ocr.serving.process import free_port


def _cfg(url, data, out, **kw) -> EvalConfig:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("show_progress", False)
    return EvalConfig(urls=[url], data_file=data, output_file=out, **kw)


def test_results_follow_the_seed_layout_and_top_k(tiny_server, eval_data, tmp_path):
    url, name = tiny_server
    out = evaluate(_cfg(url + "/v1/chat/completions", eval_data, tmp_path / "r.json", top_k=5, workers=3))
    doc = json.loads((tmp_path / "r.json").read_text())
    for key in ("overall_cer", "overall_f1", "total_samples", "timestamp", "model_name", "samples"):
        assert key in doc
    assert doc["model_name"] == name and doc["total_samples"] == 5 and doc["dataset_samples"] == 12
    assert doc["complete"] is True and doc["pending"] == 0 and out.requested == 5
    labels = [r.text for r in load_records(eval_data)[:5]]
    assert [s["label"] for s in doc["samples"]] == labels  # the first K, in order
    for s in doc["samples"]:
        assert {"image_path", "label", "prediction", "cer_score", "f1_score", "normalized_cer_score", "status"} <= set(s)
        assert s["status"] in ("ok", "empty", "truncated", "repetition") and s["finish_reason"] in ("stop", "length")
        assert (s["status"] == "truncated") == (s["finish_reason"] == "length" and s["status"] != "repetition")
        assert s["min_logprob"] <= s["mean_logprob"] <= 0  # the embedded server returns log-probabilities
    # overall figures are the micro averages of the per-sample predictions (empty predictions included)
    scores = score_pairs([s["prediction"] for s in doc["samples"]], labels)
    assert doc["overall_cer"] == pytest.approx(aggregate(scores).cer_micro)
    assert doc["normalized_overall_cer"] == doc["metrics"]["normalized"]["overall_cer"]


def test_save_interval_writes_every_n_samples(tiny_server, eval_data, tmp_path):
    url, _ = tiny_server
    path = tmp_path / "r.json"
    seen: list[int] = []

    def on_sample(_):  # called for each finished sample, before the save that sample may trigger
        seen.append(len(json.loads(path.read_text())["samples"]) if path.exists() else 0)

    evaluate(_cfg(url, eval_data, path, top_k=7, workers=2, save_interval=3), on_sample=on_sample)
    assert seen == [0, 0, 0, 3, 3, 3, 6]
    assert len(json.loads(path.read_text())["samples"]) == 7


def test_corrupt_and_missing_images_are_recorded_per_sample(tiny_server, eval_data, tmp_path):
    url, _ = tiny_server
    good = load_records(eval_data)[:2]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    data = write_data(tmp_path / "d.json", [(good[0].image_path, good[0].text), (str(corrupt), "abc"),
                                            (str(tmp_path / "gone.png"), "xyz"), (good[1].image_path, good[1].text)])
    doc = evaluate(_cfg(url, data, tmp_path / "r.json", top_k=None)).document
    st = [s["status"] for s in doc["samples"]]
    assert st[1] == st[2] == "error" and st[0] != "error" and st[3] != "error"
    assert "cannot be decoded" in doc["samples"][1]["error"] and "not found" in doc["samples"][2]["error"]
    assert "BytesIO" not in doc["samples"][1]["error"]  # the file is named, not the buffer it was read into
    assert doc["samples"][1]["cer_score"] is None and doc["samples"][1]["prediction"] is None
    assert doc["status_counts"]["error"] == 2 and doc["metrics"]["raw"]["scored_samples"] == 2
    assert doc["total_samples"] == 4


def test_server_killed_mid_run_then_resume_loses_and_repeats_nothing(tiny_server, merged_model, eval_data, tmp_path):
    """Ctrl-C on core/serve.py stops its server mid-evaluation; the rerun requests exactly the unfinished samples."""
    url, name = tiny_server
    port = free_port()
    serve = subprocess.Popen([sys.executable, str(ROOT / "core/serve.py"), str(merged_model[0]), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=eval_env())
    try:
        line = ""
        while not line.startswith("serving "):
            line = serve.stdout.readline()
            assert line or serve.poll() is None, "serve.py exited early"
        out = tmp_path / "r.json"
        cfg = _cfg(f"http://127.0.0.1:{port}", eval_data, out, top_k=None, workers=2, save_interval=1,
                   max_retries=1, backoff_base=0.05, max_tokens=24)
        five, stopped = threading.Event(), threading.Event()
        count = [0]

        def on_sample(_):  # the pool takes no new sample until the server is gone (a batching server is quick)
            count[0] += 1
            if count[0] >= 5:
                five.set()
                stopped.wait(150)

        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: errors.append(_catch(lambda: evaluate(cfg, on_sample=on_sample))))
        t.start()
        while not five.wait(0.2):
            assert t.is_alive(), f"evaluation ended before the server was stopped: {errors}"
        serve.send_signal(signal.SIGINT)  # Ctrl-C: serve.py terminates its server's process group
        try:
            code = serve.wait(120)
        except subprocess.TimeoutExpired:
            serve.kill()
            pytest.fail(f"serve.py did not stop within 120 s of Ctrl-C; its output:\n{serve.communicate()[0]}")
        assert code == 0, serve.communicate()[0]
        stopped.set()
        t.join(120)
    finally:
        stopped.set()
        if serve.poll() is None:
            serve.kill()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
    assert isinstance(errors[0], GemmaOcrError) and "rerun the same command to resume" in str(errors[0])
    first = json.loads(out.read_text())
    done = {s["index"]: s for s in first["samples"] if s["status"] != "error"}
    assert 5 <= len(done) < 12
    assert first["status_counts"]["error"] + first["pending"] == 12 - len(done)  # failed or never sent, none lost

    cfg.urls = [url]
    again = evaluate(cfg)
    doc = again.document
    assert again.resumed == len(done) and again.requested == 12 - len(done)
    assert [s["index"] for s in doc["samples"]] == list(range(12))  # each sample once
    assert doc["status_counts"]["error"] == 0 and doc["complete"] is True
    for i, s in done.items():
        assert doc["samples"][i]["prediction"] == s["prediction"] and doc["samples"][i]["latency_s"] == s["latency_s"]


def _catch(fn):
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    return None


def test_cli_runs_all_samples_with_top_k_none(tiny_server, eval_data, tmp_path):
    url, name = tiny_server
    r = subprocess.run([sys.executable, str(ROOT / "core/evaluate.py"), "--vllm-url", url + "/v1", "--data-file", str(eval_data),
                        "--output-file", str(tmp_path / "r.json"), "--top-k", "None", "--workers", "4", "--max-tokens", "8",
                        "--model-name", name, "--no-progress"], capture_output=True, text=True, env=eval_env(), timeout=180)
    assert r.returncode == 0, r.stderr
    assert "CER micro" in r.stdout and "samples: 12" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["total_samples"] == 12


@pytest.mark.parametrize("case", ["unreachable", "wrong-model"])
def test_server_problems_are_one_clear_line(case, tiny_server, eval_data, tmp_path):
    url, name = tiny_server
    args = ["--vllm-url", f"http://127.0.0.1:{free_port()}", "--wait-server", "0.5"] if case == "unreachable" else \
        ["--vllm-url", url, "--model-name", "gemma-12b"]
    r = subprocess.run([sys.executable, str(ROOT / "core/evaluate.py"), *args, "--data-file", str(eval_data),
                        "--output-file", str(tmp_path / "r.json")], capture_output=True, text=True, env=eval_env(), timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    if case == "unreachable":
        assert "not reachable" in r.stderr
    else:
        assert "'gemma-12b' is not served" in r.stderr and name in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_retries_only_transient_failures(eval_data, tmp_path):
    with ScriptedServer([503, 429]) as s:  # two transient failures, then success
        doc = evaluate(_cfg(s.url, eval_data, tmp_path / "a.json", top_k=1, model_name="m", backoff_base=0.01)).document
        assert s.requests == 3 and doc["samples"][0]["status"] == "ok"
    with ScriptedServer([400]) as s:  # a client error is not retried
        doc = evaluate(_cfg(s.url, eval_data, tmp_path / "b.json", top_k=1, model_name="m", backoff_base=0.01,
                            logprobs=False)).document
        assert s.requests == 1 and doc["samples"][0]["status"] == "error" and "HTTP 400" in doc["samples"][0]["error"]
    with ScriptedServer([400, 400]) as s:  # asked again without logprobs: still refused, so not about them
        doc = evaluate(_cfg(s.url, eval_data, tmp_path / "b2.json", top_k=1, model_name="m")).document
        assert s.requests == 2 and doc["samples"][0]["status"] == "error" and "HTTP 400" in doc["samples"][0]["error"]
    with ScriptedServer([500, 500, 500]) as s:  # retries run out: recorded as an error, retried on resume
        doc = evaluate(_cfg(s.url, eval_data, tmp_path / "c.json", top_k=1, model_name="m", max_retries=2, backoff_base=0.01)).document
        assert s.requests == 3 and doc["samples"][0]["status"] == "error"
        doc = evaluate(_cfg(s.url, eval_data, tmp_path / "c.json", top_k=1, model_name="m")).document
        assert s.requests == 4 and doc["samples"][0]["status"] == "ok"


def test_resume_refuses_another_models_results(eval_data, tmp_path):
    with ScriptedServer([], model="m") as s:
        evaluate(_cfg(s.url, eval_data, tmp_path / "r.json", top_k=2))
    with ScriptedServer([], model="other") as s, pytest.raises(GemmaOcrError, match="holds results of model 'm'"):
        evaluate(_cfg(s.url, eval_data, tmp_path / "r.json", top_k=2))
    other_data = write_data(tmp_path / "other.json", [(r.image_path, r.text) for r in load_records(eval_data)[:2]])
    with ScriptedServer([], model="m") as s:
        for changed, fragment in (({"instruction": "OCR please"}, "made with instruction"),
                                  ({"max_tokens": 5}, "made with --max-tokens 12, not 5"),
                                  ({"data_file": other_data}, "made with data file")):
            kw = {"top_k": 2, **changed}
            with pytest.raises(GemmaOcrError, match=fragment):
                evaluate(_cfg(s.url, kw.pop("data_file", eval_data), tmp_path / "r.json", **kw))
        assert evaluate(_cfg(s.url, eval_data, tmp_path / "r.json", top_k=2)).requested == 0  # same settings: resumed
        out = evaluate(_cfg(s.url, eval_data, tmp_path / "r.json", top_k=2, instruction="OCR please", resume=False))
        assert out.requested == 2 and out.document["instruction"] == "OCR please"


@pytest.mark.parametrize("given", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/chat/completions"])
def test_url_forms(given):
    ep = parse_url(given)
    assert ep.chat == "http://h:8000/v1/chat/completions" and ep.health == "http://h:8000/health"
    with pytest.raises(GemmaOcrError):
        parse_url("h:8000")
