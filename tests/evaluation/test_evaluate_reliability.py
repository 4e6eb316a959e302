"""evaluate.py against hostile conditions: reruns that would drop samples, huge images, hung servers, bad
settings, unwritable outputs and damaged results files. Real local HTTP servers, no model needed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from tests.helpers.programs import assert_one_line_error
from tests.helpers.eval_fixtures import ROOT, HangingServer, ScriptedServer, eval_env, huge_png, write_data
from tests.helpers.output_locations import read_only_folder, small_tmpfs

from gemma_ocr.data.records import load_records
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.evaluation.run import evaluate


def _cfg(url, data, out, flags=None, **kw) -> EvalConfig:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("show_progress", False)
    cfg = EvalConfig(urls=[url], data_file=data, output_file=out, **kw)
    cfg.flags = flags
    return cfg


def _evaluate_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "core/evaluate.py"), "--no-progress", *args],
                          capture_output=True, text=True, env=eval_env(), timeout=timeout)


def test_a_rerun_with_a_smaller_top_k_refuses_instead_of_dropping_samples(eval_data, tmp_path):
    out = tmp_path / "r.json"
    with ScriptedServer([]) as s:
        evaluate(_cfg(s.url, eval_data, out, top_k=None))
        before = out.read_bytes()
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(eval_data), "--output-file", str(out),
                             "--top-k", "5", "--max-tokens", "12")
        assert_one_line_error(proc, "holds 7 samples beyond the first 5", "--top-k None")
        assert out.read_bytes() == before  # all 12 samples still there
        requests_before = s.requests
        again = evaluate(_cfg(s.url, eval_data, out, top_k=None))  # what the message says: resumes, requests nothing
        assert again.requested == 0 and again.resumed == 12 and s.requests == requests_before
        # --no-resume is the explicit way to start over
        assert evaluate(_cfg(s.url, eval_data, out, top_k=5, resume=False)).document["total_samples"] == 5


def test_a_changed_data_file_is_refused_not_relabelled(eval_data, tmp_path):
    records = load_records(eval_data)
    data = write_data(tmp_path / "d.json", [(r.image_path, r.text) for r in records[:4]])
    out = tmp_path / "r.json"
    with ScriptedServer([]) as s:
        evaluate(_cfg(s.url, data, out, top_k=None))
        write_data(data, [(r.image_path, r.text + "x") for r in records[:4]])  # the labels were corrected since
        with pytest.raises(GemmaOcrError, match="holds 4 samples that are not in .* as it is now.*changed since"):
            evaluate(_cfg(s.url, data, out, top_k=None))
        write_data(data, [(r.image_path, r.text) for r in records[:2]])  # two records removed
        with pytest.raises(GemmaOcrError, match="holds 2 samples that are not in"):
            evaluate(_cfg(s.url, data, out, top_k=None))
    assert json.loads(out.read_text())["total_samples"] == 4


def test_errors_name_the_calling_programs_flags(eval_data, tmp_path):
    """A program that runs the evaluation with other flags (the pipeline) gets errors in its own terms."""
    out = tmp_path / "r.json"
    flags = {"resume": "--force", "top_k": "--eval-top-k", "workers": "--eval-workers"}
    with ScriptedServer([], model="m") as s:
        evaluate(_cfg(s.url, eval_data, out, top_k=None))
        with pytest.raises(GemmaOcrError) as err:
            evaluate(_cfg(s.url, eval_data, out, top_k=3, flags=flags))
        assert "--eval-top-k None" in str(err.value) and "--force" in str(err.value)
        assert not any(f in str(err.value) for f in ("--no-resume", "--output-file", "--top-k "))
    with ScriptedServer([], model="other") as s, pytest.raises(GemmaOcrError, match="pass --force to start it over") as err:
        evaluate(_cfg(s.url, eval_data, out, top_k=None, flags=flags))
    assert "--no-resume" not in str(err.value)
    with pytest.raises(GemmaOcrError, match="^--eval-workers must be a whole number >= 1, got 0$"):
        evaluate(_cfg("http://127.0.0.1:9", eval_data, out, workers=0, flags=flags))


def test_a_decompression_bomb_is_that_samples_error(eval_data, tmp_path):
    good = load_records(eval_data)[:2]
    huge = huge_png(tmp_path / "huge.png")
    data = write_data(tmp_path / "d.json", [(good[0].image_path, good[0].text), (str(huge), "big"),
                                            (good[1].image_path, good[1].text)])
    out = tmp_path / "r.json"
    with ScriptedServer([]) as s:
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(data), "--output-file", str(out), "--top-k", "None")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # 1: a sample failed
        doc = json.loads(out.read_text())
        assert [x["status"] for x in doc["samples"]] == ["ok", "error", "ok"] and s.requests == 2
        error = doc["samples"][1]["error"]
        assert "image too large" in error and "huge.png" in error and "400,000,000 pixels, over the limit of 89,478,485" in error
        assert "--max-image-pixels raises the limit" in error
        # the limit is a setting: here every image is too large
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(data), "--output-file", str(tmp_path / "r2.json"),
                             "--top-k", "None", "--max-image-pixels", "100")
        assert [x["status"] for x in json.loads((tmp_path / "r2.json").read_text())["samples"]] == ["error"] * 3
        assert s.requests == 2


@pytest.mark.slow
def test_a_server_that_hangs_on_completions_stops_the_run_after_a_few_timeouts(eval_data, tmp_path):
    out = tmp_path / "r.json"
    with HangingServer() as s:
        t0 = time.monotonic()
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(eval_data), "--output-file", str(out),
                             "--top-k", "None", "--workers", "2", "--timeout", "0.5", "--save-interval", "1")
        elapsed = time.monotonic() - t0
    # Before: every sample waited out 4 attempts and their backoff (about 40 s here, 3.4 hours at the defaults).
    assert elapsed < 15, elapsed
    line = assert_one_line_error(proc, "the server stopped answering", "requests in a row got no answer within --timeout 0.5s",
                                 "rerun the same command to resume")
    doc = json.loads(out.read_text())
    failed = doc["status_counts"]["error"]
    assert f"0 finished samples and {failed} failed ones are saved in {out}" in line
    assert 1 <= failed < 12 and doc["pending"] == 12 - failed and s.requests <= 6


@pytest.mark.parametrize("flag, value, message", [
    ("--timeout", "0", "--timeout must be a number of seconds > 0, got 0.0"),
    ("--timeout", "-5", "--timeout must be a number of seconds > 0, got -5.0"),
    ("--timeout", "nan", "--timeout must be a finite number"),
    ("--max-tokens", "0", "--max-tokens must be a whole number >= 1, got 0"),
    ("--max-retries", "-1", "--max-retries must be >= 0, got -1"),
    ("--max-image-pixels", "0", "--max-image-pixels must be a pixel count >= 1"),
])
def test_impossible_request_settings_are_refused_before_any_request(flag, value, message, eval_data, tmp_path):
    with ScriptedServer([]) as s:
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(eval_data), "--output-file", str(tmp_path / "r.json"),
                             flag, value)
        assert_one_line_error(proc, message)
        assert s.requests == 0
    assert not (tmp_path / "r.json").exists()


def test_an_unwritable_output_is_refused_before_any_request(eval_data, tmp_path):
    with ScriptedServer([]) as s, read_only_folder(tmp_path / "ro") as ro:
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(eval_data), "--output-file", str(ro / "r.json"))
        assert_one_line_error(proc, "--output-file", "cannot write in")
        assert s.requests == 0


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_save(eval_data, tmp_path):
    with ScriptedServer([]) as s, small_tmpfs(tmp_path / "small", size="12k") as small:
        out = small / "r.json"
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(eval_data), "--output-file", str(out),
                             "--top-k", "None", "--save-interval", "1", "--workers", "1")
        assert_one_line_error(proc, f"cannot write {out}", "no space left on device", "previous version of the file")
        saved = json.loads(out.read_text())  # the last complete save, intact
        assert 1 <= saved["total_samples"] < 12 and not list(small.glob(".r.json.*"))


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: d["samples"][1].update(index="two"), "sample 1 field 'index' is 'two', not a whole number"),
    (lambda d: d["samples"][0].update(prediction=5), "sample 0 field 'prediction' is 5, not a string"),
    (lambda d: d["samples"][2].update(status="fine"), "sample 2 field 'status' is 'fine'"),
    (lambda d: d["samples"][2].update(index=0), "sample 2 repeats index 0"),
    (lambda d: d.update(generation="greedy"), "field 'generation' is 'greedy', not a dict"),
    (lambda d: d["samples"].append("x"), "sample 3 is str, not an object"),
    (lambda d: d["samples"][1].update(prediction=None), "sample 1 has status 'ok' but prediction null"),
])
def test_a_damaged_results_file_is_one_line(damage, fragment, eval_data, tmp_path):
    out = tmp_path / "r.json"
    with ScriptedServer([]) as s:
        evaluate(_cfg(s.url, eval_data, out, top_k=3))
        doc = json.loads(out.read_text())
        damage(doc)
        out.write_text(json.dumps(doc))
        proc = _evaluate_cli("--vllm-url", s.url, "--data-file", str(eval_data), "--output-file", str(out),
                             "--top-k", "3", "--max-tokens", "12")
    assert_one_line_error(proc, str(out), fragment, "fix the file", "--no-resume")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_port_nobody_listens_on_is_reported_at_once(eval_data, tmp_path):
    port = _free_port()
    t = time.monotonic()
    with pytest.raises(GemmaOcrError, match=f"connection refused: nothing listens on port {port}.*--wait-server"):
        evaluate(_cfg(f"http://127.0.0.1:{port}", eval_data, tmp_path / "r.json"))
    assert time.monotonic() - t < 3  # not after the 10 s a server that answers but is not ready gets
    assert not (tmp_path / "r.json").exists()


def test_wait_server_waits_for_a_server_that_starts_listening_later(eval_data, tmp_path):
    with ScriptedServer([]) as s:
        port, handler = s.httpd.server_address[1], s.httpd.RequestHandlerClass
    late = threading.Timer(1.0, lambda: threads.append(_serve(ThreadingHTTPServer(("127.0.0.1", port), handler))))
    threads: list[ThreadingHTTPServer] = []
    late.start()
    try:
        doc = evaluate(_cfg(f"http://127.0.0.1:{port}", eval_data, tmp_path / "r.json", top_k=2, wait_server=20)).document
        assert doc["status_counts"]["ok"] == 2
    finally:
        late.join()
        for httpd in threads:
            httpd.shutdown()
            httpd.server_close()


def _serve(httpd: ThreadingHTTPServer) -> ThreadingHTTPServer:
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


class SlowServer(ScriptedServer):
    """A server that takes ``delay`` seconds per chat completion."""

    def __init__(self, delay: float):
        super().__init__([])

        class Slow(self.httpd.RequestHandlerClass):
            def do_POST(self):
                time.sleep(delay)
                super().do_POST()

        self.httpd.RequestHandlerClass = Slow


def _terminated_after_requests(args: list[str], server: SlowServer, requests: int) -> tuple[subprocess.Popen, str]:
    """Run the program ``args`` against ``server``, SIGTERM it once ``requests`` requests have come; (process, stderr)."""
    proc = subprocess.Popen([*args, "--vllm-url", server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=eval_env())
    deadline = time.monotonic() + 60
    while server.requests < requests and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return proc, stderr


def test_sigterm_saves_what_finished_and_says_so_as_ctrl_c_does(eval_data, tmp_path):
    out = tmp_path / "r.json"
    args = [sys.executable, str(ROOT / "core/evaluate.py"), "--no-progress", "--data-file", str(eval_data),
            "--output-file", str(out), "--top-k", "None", "--workers", "1", "--save-interval", "100", "--max-tokens", "12"]
    with SlowServer(0.3) as s:
        proc, stderr = _terminated_after_requests(args, s, 4)
        assert proc.returncode == 143, stderr
        assert "Traceback" not in stderr and "interrupted (SIGTERM)" in stderr
        assert "samples saved in" in stderr and "rerun the same command to resume" in stderr
        saved = json.loads(out.read_text())  # no periodic save was due: this one is the interruption's
        assert 3 <= saved["total_samples"] < 12 and saved["complete"] is False
        again = subprocess.run([*args, "--vllm-url", s.url], capture_output=True, text=True, env=eval_env(), timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"resumed {saved['total_samples']}" in again.stdout
    assert json.loads(out.read_text())["total_samples"] == 12


def test_a_server_that_answers_but_is_not_ready_is_named_so(eval_data, tmp_path):
    with ScriptedServer([]) as s:
        class Loading(s.httpd.RequestHandlerClass):
            def do_GET(self):
                self._send(503, {"status": "loading"})

        s.httpd.RequestHandlerClass = Loading
        with pytest.raises(GemmaOcrError, match=r"is not ready \(/health answered HTTP 503; waited 0.5s\); pass "
                                                r"--wait-server SECONDS"):
            evaluate(_cfg(s.url, eval_data, tmp_path / "r.json", wait_server=0.5))


def test_sigterm_during_transcribe_saves_what_finished_too(eval_data, tmp_path):
    from pathlib import Path

    images = Path(load_records(eval_data)[0].image_path).parent
    out = tmp_path / "t.jsonl"
    args = [sys.executable, str(ROOT / "core/transcribe.py"), str(images), "--no-progress", "--output-file", str(out),
            "--workers", "1", "--save-interval", "100", "--max-tokens", "12"]
    with SlowServer(0.3) as s:
        proc, stderr = _terminated_after_requests(args, s, 4)
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr, stderr
    assert len(out.read_text().splitlines()) >= 3
