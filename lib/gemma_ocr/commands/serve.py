"""Serve a merged model behind an OpenAI-compatible API until Ctrl-C (embedded transformers server, or vLLM)."""

from __future__ import annotations

import signal
import time

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ArgumentParser, flag_value
from gemma_ocr.serving.defaults import DEFAULT_HOST, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_WAIT, DEFAULT_PORT, ENGINES
from gemma_ocr.serving.process import check_host_and_port, start_server
from gemma_ocr.serving.flags import add_media_flags, dtype_problem, embedded_flag_problem


EMBEDDED_ONLY = {  # flag: what vLLM has instead, and what 1 means
    "--max-batch-size": ("vLLM batches by itself (its --max-num-seqs caps a batch)", " (1: one request at a time)"),
    "--torch-threads": ("vLLM's CPU build sets its own (VLLM_CPU_OMP_THREADS_BIND)", ""),
    "--max-wait": ("vLLM schedules its batches by itself", None),
}


def checked_flags(args) -> list[str]:
    """The flags that go to the server, each checked here first (one line naming the flag, before anything starts)."""
    check_host_and_port(args.host, args.port)
    passed: list[str] = []
    for flag, (in_vllm, one) in EMBEDDED_ONLY.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if args.engine != "transformers":
            raise GemmaOcrError(f"{flag} is the embedded server's (--engine transformers); {in_vllm}")
        if one is not None and value < 1:
            raise GemmaOcrError(f"{flag} must be >= 1{one}, got {value}")
        passed += [flag, str(value)]
    problem = (embedded_flag_problem(max_wait=args.max_wait, local_media_path=args.allowed_local_media_path)
               or (dtype_problem(args.dtype) if args.engine == "transformers" or args.dtype in ("float16", "half")
                   else None))
    if problem:
        raise GemmaOcrError(problem)
    if args.allowed_local_media_path:
        passed += ["--allowed-local-media-path", args.allowed_local_media_path]
    if args.allowed_media_domains:
        passed += ["--allowed-media-domains", *args.allowed_media_domains]
    return passed


def main() -> None:
    p = ArgumentParser(description=__doc__)
    p.add_argument("model_dir", help=f"merged checkpoint folder (e.g. {LAYOUT.merged})")
    p.add_argument("--engine", choices=ENGINES, default="transformers",
                   help="transformers: embedded, CPU or GPU; vllm: production (its CUDA or CPU build)")
    p.add_argument("--vllm-python", default=None, metavar="PATH",
                   help="vllm: the python of the venv that has vLLM (e.g. .venv-vllm/bin/python from "
                        "scripts/build_vllm_env.sh; default: this one, or the vllm command on PATH)")
    p.add_argument("--port", type=flag_value(int), default=DEFAULT_PORT)
    p.add_argument("--host", default=DEFAULT_HOST, help="0.0.0.0 to accept other machines")
    p.add_argument("--served-model-name", default=None, help="name clients send (default: the folder's name)")
    p.add_argument("--dtype", default=None, help="vllm: bfloat16 (default); transformers: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-model-len", type=flag_value(int), default=DEFAULT_MAX_MODEL_LEN, help="vllm: context length")
    p.add_argument("--max-batch-size", type=flag_value(int), default=None,
                   help=f"transformers: most concurrent requests generated together (default {DEFAULT_MAX_BATCH_SIZE}; "
                        f"1: one at a time)")
    p.add_argument("--max-wait", type=flag_value(float), default=None,
                   help=f"transformers: seconds a forming batch waits for requests still being read "
                        f"(default {DEFAULT_MAX_WAIT})")
    p.add_argument("--torch-threads", type=flag_value(int), default=None,
                   help="transformers: torch CPU threads of the server (default: torch's, one per core; 1 is fastest "
                        "for a small model on a shared CPU)")
    p.add_argument("--startup-timeout", type=flag_value(float), default=900.0, help="seconds to wait for the model to load")
    p.add_argument("--log-file", default=None, help="server output (default: a temporary file)")
    add_media_flags(p)  # both engines take them (vLLM names them so)
    args, extra = p.parse_known_args()  # unknown flags go to the engine (e.g. --tensor-parallel-size 2 for vllm)
    extra = checked_flags(args) + extra

    def on_term(*_):  # `kill PID` and a closed terminal stop the server like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    with start_server(args.model_dir, engine=args.engine, port=args.port, host=args.host,
                      served_model_name=args.served_model_name, dtype=args.dtype, max_model_len=args.max_model_len,
                      startup_timeout=args.startup_timeout, log_file=args.log_file, extra_args=extra,
                      vllm_python=args.vllm_python) as (url, name):
        print(f"serving {args.model_dir} ({args.engine}) at {url}  model name: {name}", flush=True)
        print(f"evaluate: python core/evaluate.py --vllm-url {url}/v1/chat/completions --model-name {name}", flush=True)
        print(f"transcribe: python core/transcribe.py IMAGES... --vllm-url {url} --model-name {name}", flush=True)
        print("Ctrl-C stops the server", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping the server", flush=True)
    return 0
