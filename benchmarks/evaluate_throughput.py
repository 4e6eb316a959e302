#!/usr/bin/env python
"""Evaluator throughput against the server's own capacity, and metric throughput; prints the figures.

1. A local OpenAI-compatible stub with a fixed latency per request (no compute): its capacity
   with W concurrent requests is W / latency. The evaluator with W workers should come close,
   which shows the client (image encoding, JSON, connection pool, bookkeeping) is not the bottleneck.
   The stub's own capacity is also measured with bare pre-encoded requests at the same concurrency.
2. The real embedded server (transformers serving stack) on the tiny Gemma 3: its own capacity
   (bare sequential requests) against the evaluator with 1, 4, 8, 16 workers.
3. Metrics: gemma_ocr.metrics.score_pairs on 100k pairs against a pure-Python Levenshtein + F1.

    PYTHONPATH=lib python benchmarks/evaluate_throughput.py [--skip-real] [--pairs 100000]
"""

from __future__ import annotations

import argparse
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
from gemma_ocr.data.synthetic import WORDS, SyntheticConfig, generate_dataset  # noqa: E402
from gemma_ocr.evaluation import EvalConfig, build_request, encode_image, evaluate  # noqa: E402
from gemma_ocr.metrics import score_pairs  # noqa: E402

WORKERS = (1, 4, 8, 16)


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


def real_benchmark(data: Path, out_dir: Path, image_url: str, n: int, max_tokens: int) -> None:
    from gemma_ocr.modeling.tiny import build_tiny_gemma3
    from gemma_ocr.serving import start_server

    model_dir = build_tiny_gemma3(out_dir / "tiny-gemma3")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(f"\n## Evaluator vs the embedded server (tiny Gemma 3, CPU, max_tokens {max_tokens}, {n} images)")
    with start_server(model_dir, env=env) as (url, name):
        bare_capacity(url, name, image_url, 3, 1, max_tokens)  # warm-up
        cap = bare_capacity(url, name, image_url, n, 1, max_tokens)
        print(f"server capacity (bare sequential requests, same image): {cap:.2f} req/s")
        print(f"{'workers':>7} {'evaluator req/s':>16} {'of capacity':>12}")
        for w in WORKERS:
            ev = evaluator_rate(url, data, out_dir, w, n, max_tokens, "real")
            print(f"{w:>7} {ev:>16.2f} {ev / cap:>11.0%}")
    print("(the server runs one generation at a time; more workers cannot raise its capacity, only keep it busy)")


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
    p.add_argument("--real-images", type=int, default=40, help="images per embedded-server run")
    p.add_argument("--real-max-tokens", type=int, default=16)
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
            real_benchmark(data, tmp_path, image_url, args.real_images, args.real_max_tokens)
    metric_benchmark(args.pairs)


if __name__ == "__main__":
    main()
