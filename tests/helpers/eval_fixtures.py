"""Shared fixtures of the merge/serve/evaluate tests: a tiny adapter, its merged checkpoint, a tiny Gemma 4, servers."""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "out_proj", "fc1", "fc2"]


def eval_env() -> dict[str, str]:
    """Environment for subprocesses: the library importable, one thread each (the machine is shared)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "lib") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def make_adapter(base_dir: Path, out_dir: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """A LoRA adapter on the language and vision layers with random (non-zero) B weights, saved with the processor."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def eval_base_model(tmp_path_factory) -> Path:
    import torch

    from gemma_ocr.modeling.tiny import build_tiny_gemma3

    torch.set_num_threads(1)
    return build_tiny_gemma3(tmp_path_factory.mktemp("evalbase") / "tiny-gemma3")


@pytest.fixture(scope="session")
def eval_adapter(eval_base_model, tmp_path_factory) -> Path:
    return make_adapter(eval_base_model, tmp_path_factory.mktemp("evaladapter") / "gemma-ocr")


@pytest.fixture(scope="session")
def merged_model(eval_adapter, tmp_path_factory):
    """(folder, MergeReport) of the tiny adapter merged and verified."""
    from gemma_ocr.merge.adapter import merge_adapter

    out = tmp_path_factory.mktemp("evalmerged") / "merged-gemma-ocr"
    return out, merge_adapter(eval_adapter, out)


@pytest.fixture(scope="session")
def tiny_server(merged_model) -> Iterator[tuple[str, str]]:
    """The real embedded server on the merged tiny model, started once: (base_url, model_name)."""
    from gemma_ocr.serving.process import start_server

    with start_server(merged_model[0], env=eval_env(), startup_timeout=180) as served:
        yield served


@pytest.fixture(scope="session")
def eval_gemma4(tmp_path_factory) -> Path:
    """A random-weight tiny Gemma 4 (a full model: served as it is, image-token budget 70)."""
    from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4

    return build_tiny_gemma4(tmp_path_factory.mktemp("evalgemma4") / "tiny-gemma4")


@pytest.fixture(scope="session")
def gemma4_server(eval_gemma4) -> Iterator[tuple[str, str]]:
    """The real embedded server on the tiny Gemma 4, started once: (base_url, model_name)."""
    from gemma_ocr.serving.process import start_server

    with start_server(eval_gemma4, env=eval_env(), startup_timeout=180) as served:
        yield served


def answering_gemma4(base_dir: Path, out_dir: Path, answer: list[str]) -> Path:
    """A copy of a tiny Gemma 4 whose greedy answer to any prompt is the tokens ``answer`` (ending the answer).

    Its layers add nothing (attention and MLP outputs zeroed), so each step's last hidden state depends on the
    last token only; an untied ``lm_head`` then maps the prompt's last token ("\\n") to ``answer[0]`` and each
    answer token to the next."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(base_dir)
    chain = processor.tokenizer.convert_tokens_to_ids(["\n", *answer])
    text = model.model.language_model
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.config.tie_word_embeddings = model.config.get_text_config().tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(text.embed_tokens.weight.detach().clone())
        hidden = text(input_ids=torch.tensor([chain[:-1]])).last_hidden_state[0]
        for h, following in zip(hidden, chain[1:]):
            model.lm_head.weight[following] = h * (60.0 / h.dot(h))  # a logit of 60 before the soft cap
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    """12 synthetic lines in the input layout."""
    from gemma_ocr.data.records import write_records
    from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("evaldata")
    records = generate_dataset(root / "raw", SyntheticConfig(n_samples=12, seed=3))
    return write_records(records, root / "input" / "ocr_test.json")


def write_data(path: Path, items: list[tuple[str, str]]) -> Path:
    path.write_text(json.dumps([{"image_path": p, "ocr_text": t} for p, t in items]), encoding="utf-8")
    return path


class ScriptedServer:
    """A local HTTP server that answers chat completions from a script (retry behaviour, crafted answers).

    ``answers``: the choices to give in turn (``{"content", "finish_reason", "logprobs": [floats]}``; the
    last one repeats); ``refuse_logprobs``: answer HTTP 400 to a request that asks for log-probabilities.
    """

    def __init__(self, statuses: list[int], model: str = "m", answers: list[dict] | None = None,
                 refuse_logprobs: bool = False):
        self.statuses = list(statuses)
        self.answers = list(answers or [{"content": "hello", "finish_reason": "stop"}])
        self.requests = 0
        self.bodies: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                owner.requests += 1
                owner.bodies.append(body)
                code = owner.statuses.pop(0) if owner.statuses else 200
                if refuse_logprobs and body.get("logprobs"):
                    self._send(400, {"error": "logprobs is not supported"})
                elif code == 200:
                    answer = owner.answers.pop(0) if len(owner.answers) > 1 else owner.answers[0]
                    choice = {"index": 0, "finish_reason": answer.get("finish_reason"),
                              "message": {"role": "assistant", "content": answer["content"]}}
                    if answer.get("logprobs") is not None and body.get("logprobs"):
                        choice["logprobs"] = {"content": [{"token": "?", "logprob": v} for v in answer["logprobs"]]}
                    self._send(200, {"choices": [choice]})
                else:
                    self._send(code, {"error": f"scripted {code}"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ScriptedServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HangingServer(ScriptedServer):
    """A server that answers /health and /v1/models but never answers a chat completion (a hung model)."""

    def __init__(self, model: str = "m"):
        super().__init__([], model=model)
        release = self.release = threading.Event()
        owner = self

        class Hang(self.httpd.RequestHandlerClass):
            def do_POST(self):
                owner.requests += 1
                release.wait(120)

        self.httpd.RequestHandlerClass = Hang

    def __exit__(self, *exc) -> None:
        self.release.set()
        super().__exit__(*exc)


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid, all-white 1-bit PNG of ``width`` x ``height`` (a few hundred KB on disk, 400 M pixels decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\xff" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path
