#!/usr/bin/env python
"""What bounds the embedded server's batching gain at 8 workers: the cost of one request, batched and alone.

A served request costs its prompt (image decoding, chat template, the processor), its share of ``generate``,
and the rest (HTTP, the request and response models, JSON, the inference thread's hand-offs). Batching shares
``generate``'s per-call and per-step work between the requests of a batch; the prompt and the rest stay per
request. This script measures, on the tiny reader and the same held-out lines as evaluate_throughput.py:

1. in process, on one torch thread, CPU ms per request of ``prepare_prompts`` and ``generate_batch`` for
   batches of 8 and for one request at a time (the server's own functions, greedy, max_tokens 32,
   log-probabilities asked for, as the evaluator asks);
2. the two embedded servers (one at a time and batching) at 8 evaluator workers, taking turns: server CPU
   ms per request, and from it the rest (server CPU minus prompt and generate);
3. the ceilings of the requests/s ratio that follow: generate alone, generate and prompt, and all three
   (what the server does), and how small the rest would have to be for 4x.

    PYTHONPATH=lib python benchmarks/batching_ceiling.py [--rounds 5] [--images 256]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_throughput import BATCHING, ONE_AT_A_TIME, READER_HELDOUT_SEED, server_rows  # noqa: E402

from gemma_ocr.training.config import DEFAULT_INSTRUCTION  # noqa: E402
from gemma_ocr.data.records import write_records  # noqa: E402
from gemma_ocr.data.synthetic import READER_PRETRAINING, generate_dataset  # noqa: E402
from gemma_ocr.evaluation.client import encode_image  # noqa: E402
from gemma_ocr.layout import LAYOUT  # noqa: E402

BATCH = 8
MAX_TOKENS = 32


def in_process_costs(model_dir: Path, image_paths: list[str], rounds: int) -> dict[str, float]:
    """Median CPU ms per request of the prompt and of generate, batched by 8 and alone."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    from gemma_ocr.serving.generation import ChatPrompt, GenerationJob, generate_batch, prepare_prompts
    from gemma_ocr.serving.indexed_masks import use_indexed_masks

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    use_indexed_masks(model)
    config = GenerationConfig.from_dict({**model.generation_config.to_dict(), "max_new_tokens": MAX_TOKENS,
                                         "do_sample": False})
    prompts = [ChatPrompt([{"role": "user", "content": [{"type": "image", "url": encode_image(p)},
                                                        {"type": "text", "text": DEFAULT_INSTRUCTION}]}])
               for p in image_paths]
    groups = [prompts[i:i + BATCH] for i in range(0, len(prompts) - BATCH + 1, BATCH)]

    def cost(group_size: int) -> tuple[float, float, list[int]]:
        prompt_s = generate_s = 0.0
        lengths = []
        for group in groups:
            for chunk in ([group] if group_size == BATCH else [[p] for p in group]):
                t = time.thread_time()
                inputs = prepare_prompts(processor, chunk)
                prompt_s += time.thread_time() - t
                t = time.thread_time()
                answers = generate_batch([GenerationJob(model, processor, x, config, top_logprobs=0) for x in inputs])
                generate_s += time.thread_time() - t
                lengths += [len(a.token_ids) for a in answers]
        n = len(groups) * BATCH
        return prompt_s / n * 1000, generate_s / n * 1000, lengths

    cost(BATCH), cost(1)  # warm up
    runs: dict[str, list[float]] = {"prompt_8": [], "generate_8": [], "prompt_1": [], "generate_1": []}
    for _ in range(rounds):  # alternating, so that the machine's drift hits both alike
        for size in (BATCH, 1):
            p, g, lengths = cost(size)
            runs[f"prompt_{size}"].append(p)
            runs[f"generate_{size}"].append(g)
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["answer_tokens"] = statistics.mean(lengths)
    longest = [max(lengths[i:i + BATCH]) for i in range(0, len(lengths), BATCH)]
    out["batch_steps"] = statistics.mean(longest)
    return out


def server_costs(model_dir: Path, data: Path, out_dir: Path, n: int, rounds: int) -> dict[str, float]:
    """Median server CPU ms per request at 8 workers, one at a time and batching (the two servers take turns)."""
    from gemma_ocr.serving.process import start_server

    env = dict(os.environ, OMP_NUM_THREADS="1")
    per: dict[str, list[float]] = {ONE_AT_A_TIME: [], BATCHING: []}
    rates: dict[str, list[float]] = {ONE_AT_A_TIME: [], BATCHING: []}
    with contextlib.ExitStack() as stack:
        urls = {}
        for label, extra in ((ONE_AT_A_TIME, ["--max-batch-size", "1"]), (BATCHING, [])):
            urls[label], _ = stack.enter_context(start_server(model_dir, engine="transformers", env=env, extra_args=extra,
                                                                 max_model_len=512))
            server_rows(label, urls[label], data, out_dir, 16, MAX_TOKENS, (BATCH,))  # warm up
        for _ in range(rounds):
            for label, url in urls.items():
                row = server_rows(label, url, data, out_dir, n, MAX_TOKENS, (BATCH,))[0]
                per[label].append(row["server_cpu_s"] / n * 1000)
                rates[label].append(row["req_s"])
    ratio = statistics.median(b / a for a, b in zip(rates[ONE_AT_A_TIME], rates[BATCHING]))
    return {"server_1": statistics.median(per[ONE_AT_A_TIME]), "server_8": statistics.median(per[BATCHING]),
            "req_s_1": statistics.median(rates[ONE_AT_A_TIME]), "req_s_8": statistics.median(rates[BATCHING]),
            "ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=LAYOUT.reader)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        records = generate_dataset(Path(tmp) / "reader", dataclasses.replace(
            READER_PRETRAINING, n_samples=args.images, seed=READER_HELDOUT_SEED))
        data = write_records(records, Path(tmp) / "reader_test.json")
        c = in_process_costs(args.model, [r.image_path for r in records], args.rounds)
        s = server_costs(args.model, data, Path(tmp), args.images, args.rounds)
    rest_1, rest_8 = s["server_1"] - c["prompt_1"] - c["generate_1"], s["server_8"] - c["prompt_8"] - c["generate_8"]
    print(f"{args.images} held-out lines of the tiny reader, answers of {c['answer_tokens']:.1f} tokens on average; "
          f"a batch of {BATCH} runs {c['batch_steps']:.1f} steps (its longest answer)")
    print(f"\nCPU ms per request (medians of {args.rounds} alternating rounds; in process for prompt and generate)")
    print(f"{'':<22} {'one at a time':>14} {'batches of 8':>13} {'ratio':>6}")
    rows = [("prompt", c["prompt_1"], c["prompt_8"]), ("generate", c["generate_1"], c["generate_8"]),
            ("rest (server - both)", rest_1, rest_8), ("server, measured", s["server_1"], s["server_8"])]
    for name, one, batched in rows:
        print(f"{name:<22} {one:>14.2f} {batched:>13.2f} {one / batched:>5.2f}x")
    g = c["generate_1"] / c["generate_8"]
    gp = (c["generate_1"] + c["prompt_1"]) / (c["generate_8"] + c["prompt_8"])
    rest_for_4x = (c["generate_1"] + c["prompt_1"] - 4 * (c["generate_8"] + c["prompt_8"])) / 3
    print(f"\nceiling of the requests/s ratio at {BATCH} workers, were the server always busy:")
    print(f"  generate alone             {g:.2f}x")
    print(f"  generate and prompt        {gp:.2f}x")
    print(f"  all three (server CPU)     {s['server_1'] / s['server_8']:.2f}x")
    print(f"  measured requests/s ratio  {s['ratio']:.2f}x ({s['req_s_1']:.1f} and {s['req_s_8']:.1f} req/s)")
    if rest_for_4x > 0:
        print(f"4x needs the rest under {rest_for_4x:.2f} ms per request, batched and alone "
              f"(it is {rest_8:.2f} and {rest_1:.2f})")
    else:
        print("4x is out of reach even with no rest at all: generate and prompt alone stay under it")
    print(f"({time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} CPU s for this script, "
          f"servers apart; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
