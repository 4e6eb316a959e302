"""A figure is never computed from nothing: a run whose every request failed has no CER (null, and a line saying
why), is never complete and exits non-zero; every run with failures names their count and the first reason; a
results file whose answered sample has no prediction is refused, never scored as an empty answer.

Real local HTTP servers answer badly (HTTP 200 with a body that holds no answer); the programs run as processes.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.eval_fixtures import ScriptedServer

from gemma_ocr.data.records import load_records
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.run import evaluate
from gemma_ocr.scoring.metrics import aggregate, score_pairs
from gemma_ocr.scoring.results import build_document

#: what a broken server answers with HTTP 200, and the words the failure is named with
BAD_ANSWERS = {
    "invalid-json": ("application/json", b'{"choices": [', "not JSON"),
    "html": ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>", "not JSON: text/html"),
    "empty-choices": ("application/json", b'{"id": "x", "choices": []}', "an empty 'choices' list"),
    "no-message": ("application/json", b'{"choices": [{"index": 0, "finish_reason": "stop"}]}',
                   "no 'message' in its first choice"),
    "no-choices": ("application/json", b'{"object": "chat.completion"}', "no 'choices' list"),
    "a-list": ("application/json", b"[]", "a JSON list, not an object"),
}


class BadServer:
    """A real HTTP server that lists model ``m`` and answers every chat completion with HTTP 200 and ``body``,
    until ``good`` is set (then a proper answer, "hello")."""

    def __init__(self, content_type: str, body: bytes):
        self.good = threading.Event()
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, kind: str, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                models = {"object": "list", "data": [{"id": "m", "object": "model"}]}
                self._send("application/json", b'{"status": "ok"}' if self.path == "/health" else json.dumps(models).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests += 1
                if owner.good.is_set():
                    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": "hello"}}]}
                    self._send("application/json", json.dumps(answer).encode())
                else:
                    self._send(content_type, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "BadServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _evaluate(url: str, data: Path, out: Path, *flags: str):
    return run_cli("evaluate.py", "--no-progress", "--vllm-url", url, "--data-file", str(data), "--output-file",
                   str(out), "--top-k", "3", "--max-tokens", "8", "--max-retries", "0", *flags, check=False, timeout=120)


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_a_run_whose_every_request_failed_has_no_cer_and_says_why(case, eval_data, tmp_path):
    kind, body, named = BAD_ANSWERS[case]
    out = tmp_path / "r.json"
    with BadServer(kind, body) as server:
        proc = _evaluate(server.url, eval_data, out)
        assert server.requests == 3
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "CER micro 0.0000" not in proc.stdout and "CER micro" not in proc.stdout
    assert "failed: 3 of 3 samples failed and are not scored; first, sample 0" in proc.stdout
    assert named in proc.stdout
    assert "no CER: no sample was scored" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["overall_cer"] is None and doc["overall_f1"] is None and doc["normalized_overall_cer"] is None
    assert doc["metrics"]["raw"]["scored_samples"] == 0 and doc["metrics"]["raw"]["cer_macro"] is None
    assert doc["complete"] is False
    assert doc["no_figures_reason"].startswith("no CER: no sample was scored")
    assert doc["failures"]["count"] == 3 and named in doc["failures"]["first"]["error"]
    assert doc["failures"]["first"]["index"] == 0
    assert [s["status"] for s in doc["samples"]] == ["error"] * 3

    # count_score.py on that file: no figure either, the failures named, exit 1
    norm = tmp_path / "n.json"
    proc = run_cli("count_score.py", "--input", str(out), "--output", str(norm), check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "failed: 3 of 3 samples" in proc.stdout and "no CER" in proc.stdout and "0.0000" not in proc.stdout
    rescored = json.loads(norm.read_text())
    assert rescored["overall_cer"] is None and rescored["complete"] is False
    assert rescored["failures"]["count"] == 3 and rescored["no_figures_reason"]


def test_the_failed_samples_are_retried_and_the_figures_come_once_answers_do(eval_data, tmp_path):
    out = tmp_path / "r.json"
    kind, body, _ = BAD_ANSWERS["html"]
    with BadServer(kind, body) as server:
        assert _evaluate(server.url, eval_data, out).returncode == 1
        server.good.set()
        proc = _evaluate(server.url, eval_data, out)  # the same command: resumes, the errors asked again
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "failed:" not in proc.stdout and "no CER" not in proc.stdout and "CER micro" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and isinstance(doc["overall_cer"], float)
    assert "failures" not in doc and "no_figures_reason" not in doc
    assert doc["status_counts"]["error"] == 0


def test_a_run_with_some_failures_names_them_and_scores_only_the_answers(eval_data, tmp_path):
    records = load_records(eval_data)[:4]
    out = tmp_path / "r.json"
    with ScriptedServer([400, 200, 400, 200], answers=[{"content": records[1].text, "finish_reason": "stop"}]) as s:
        cfg = EvalConfig(urls=[s.url], data_file=eval_data, output_file=out, top_k=4, workers=1, max_retries=0,
                         logprobs=False, show_progress=False)
        doc = evaluate(cfg).document
    assert doc["status_counts"]["error"] == 2 and doc["metrics"]["raw"]["scored_samples"] == 2
    assert doc["failures"]["count"] == 2 and doc["failures"]["first"]["index"] == 0
    assert "HTTP 400" in doc["failures"]["first"]["error"]
    assert "no_figures_reason" not in doc and doc["overall_cer"] is not None
    # the figure is the answered samples' own, the failures left out
    answered = [smp for smp in doc["samples"] if smp["status"] != "error"]
    assert doc["overall_cer"] == pytest.approx(aggregate(score_pairs([a["prediction"] for a in answered],
                                                                     [a["label"] for a in answered])).cer_micro)


def _results_with_null_prediction(path: Path, eval_data: Path) -> Path:
    """A results file (as evaluate.py writes it) whose sample 1 was edited to ``status: ok, prediction: null``."""
    records = load_records(eval_data)[:3]
    samples = [{"index": i, "image_path": r.image_path, "label": r.text, "prediction": r.text, "status": "ok"}
               for i, r in enumerate(records)]
    doc = build_document(samples, "m", intervals=False, data_file=str(eval_data), top_k=3,
                         generation={"max_tokens": 8, "temperature": 0.0}, complete=True)
    doc["samples"][1]["prediction"] = None
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_an_answered_sample_without_a_prediction_is_refused_naming_it(eval_data, tmp_path):
    results = _results_with_null_prediction(tmp_path / "r.json", eval_data)
    before = results.read_bytes()
    proc = run_cli("count_score.py", "--input", str(results), "--output", str(tmp_path / "n.json"), check=False)
    assert_one_line_error(proc, "sample 1", "status 'ok'", "prediction null", "'error'")
    assert not (tmp_path / "n.json").exists()
    with ScriptedServer([]) as s:  # resuming that file: refused too, the file untouched, nothing asked
        proc = _evaluate(s.url, eval_data, results, "--model-name", "m")
        assert s.requests == 0
    assert_one_line_error(proc, str(results), "sample 1", "status 'ok'", "--no-resume")
    assert results.read_bytes() == before


def test_a_figure_of_nothing_is_none_not_zero():
    empty = aggregate([])
    assert empty.cer_micro is None and empty.cer_macro is None and empty.f1_micro is None and empty.f1_macro is None
    assert empty.scored_samples == 0
    only_empty_refs = aggregate(score_pairs(["", "x"], ["", ""]))
    assert only_empty_refs.cer_micro is None and only_empty_refs.cer_macro is None  # no reference character
    assert only_empty_refs.f1_macro == pytest.approx(0.5) and only_empty_refs.empty_references == 2
    doc = build_document([{"index": 0, "image_path": "a.png", "label": "", "prediction": "", "status": "ok"}], "m",
                         intervals=False, complete=True)
    assert doc["overall_cer"] is None and "empty reference" in doc["no_figures_reason"]
    assert doc["complete"] is True  # a sample was scored (F1 is defined): only the CER is missing
    nothing = build_document([{"index": 0, "image_path": "a.png", "label": "ab", "prediction": None, "status": "error",
                               "error": "HTTP 500"}], "m", complete=True)
    assert nothing["overall_cer"] is None and nothing["complete"] is False and nothing["failures"]["count"] == 1
    assert nothing.get("overall_cer_ci95") is None


def test_the_error_report_of_a_run_with_nothing_scored_has_no_cer(tmp_path):
    samples = [{"index": i, "image_path": f"{i}.png", "label": "abc", "prediction": None, "status": "error",
                "error": "unexpected response from http://x (HTTP 200, not JSON: text/html): <html>"} for i in range(2)]
    results = tmp_path / "r.json"
    results.write_text(json.dumps(build_document(samples, "m", complete=True)), encoding="utf-8")
    proc = run_cli("error_analysis.py", str(results), "--output-dir", str(tmp_path / "report"), check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "CER n/a" in proc.stdout and "0.0000" not in proc.stdout and "no CER: no sample was scored" in proc.stdout
    assert "failed: 2 of 2 samples failed and are not scored; first, sample 0 (0.png): unexpected response" in proc.stdout
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["cer_micro"] is None
    assert "0.0000" not in (tmp_path / "report" / "report.html").read_text()
