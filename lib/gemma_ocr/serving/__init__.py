"""Serving a merged checkpoint behind an OpenAI-compatible API.

* :mod:`~gemma_ocr.serving.process`: the server as a child process (embedded or vLLM), started, waited for, stopped,
  dying with its parent;
* :mod:`~gemma_ocr.serving.app`: the embedded server's app (FastAPI/Starlette, the processor and ``generate``);
* :mod:`~gemma_ocr.serving.batching`: concurrent requests generated as one batch;
* :mod:`~gemma_ocr.serving.openai_api`: the chat-completions request, checked in one place, and the answers' layout;
* :mod:`~gemma_ocr.serving.media`: which image URLs a request may name (data URLs; local files and hosts by flag).

``python -m gemma_ocr.serving MODEL_DIR ...`` runs the embedded server in the foreground. Importing this package
loads neither torch nor transformers.
"""

from __future__ import annotations

from gemma_ocr.serving.defaults import (
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_WAIT,
    DEFAULT_PORT,
    ENGINES,
    MAX_CACHED_GENERATION_CONFIGS,
)
from gemma_ocr.serving.process import (
    PARENT_DEATH_SIGNAL,
    PARENT_PID_ENV,
    ServerProcess,
    VllmInstall,
    check_host_and_port,
    check_model_dir,
    check_port_free,
    cpu_kv_cache_bytes,
    default_served_name,
    die_with_parent,
    exec_dying_with_parent,
    find_vllm,
    free_port,
    group_alive,
    group_gone,
    guarded_command,
    host_problem,
    port_holders,
    port_problem,
    server_command,
    start_server,
    vllm_command,
)

__all__ = [
    "DEFAULT_HOST", "DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_MODEL_LEN", "DEFAULT_MAX_WAIT", "DEFAULT_PORT", "ENGINES",
    "MAX_CACHED_GENERATION_CONFIGS", "PARENT_DEATH_SIGNAL", "PARENT_PID_ENV", "ServerProcess", "VllmInstall",
    "check_host_and_port", "check_model_dir", "check_port_free", "cpu_kv_cache_bytes", "default_served_name",
    "die_with_parent", "exec_dying_with_parent", "find_vllm", "free_port", "group_alive", "group_gone",
    "guarded_command", "host_problem", "port_holders", "port_problem", "server_command", "start_server",
    "vllm_command",
]
