"""The embedded server's generation: batches of concurrent requests, ``stop``, ``logprobs``, really served."""

from __future__ import annotations

import base64
import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from tests.helpers.eval_fixtures import eval_env

from gemma_ocr.data.records import load_records
from gemma_ocr.evaluation.client import build_request, encode_image
from gemma_ocr.serving.process import start_server

INSTRUCTIONS = ("OCR", "Read the text in this image")  # two prompt lengths: batches get left padding


def _chat(session: requests.Session, url: str, body: dict) -> dict:
    r = session.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def images(eval_data) -> list[str]:
    return [encode_image(r.image_path) for r in load_records(eval_data)]


def test_stop_ends_the_answer_before_the_stop_string_and_the_connection_stays_usable(tiny_server, images):
    """`stop` used to be HTTP 500 (transformers' stop-string check asked the processor for a vocabulary) and the
    next request on the same keep-alive connection was reset."""
    import openai

    url, name = tiny_server
    with requests.Session() as s:
        full = _chat(s, url, build_request(name, images[0], "OCR", 12))["choices"][0]["message"]["content"]
        assert len(full) >= 4, full
        stop = full[2:4]
        body = {**build_request(name, images[0], "OCR", 12), "stop": [stop, "never printed"]}
        choice = _chat(s, url, body)["choices"][0]
        assert choice["message"]["content"] == full[: full.find(stop)]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
        again = _chat(s, url, build_request(name, images[0], "OCR", 12))  # the same connection
        assert again["choices"][0]["message"]["content"] == full
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60)
    resp = client.chat.completions.create(model=name, temperature=0, max_tokens=12, stop=stop,
                                          messages=build_request(name, images[0], "OCR", 12)["messages"])
    assert resp.choices[0].message.content == full[: full.find(stop)] and resp.choices[0].finish_reason == "stop"


def test_logprobs_are_the_models_own_and_name_each_generated_token(tiny_server, merged_model, images, eval_data):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    url, name = tiny_server
    body = {**build_request(name, images[0], "OCR", 8), "logprobs": True, "top_logprobs": 3}
    with requests.Session() as s:
        response = _chat(s, url, body)
        plain = _chat(s, url, build_request(name, images[0], "OCR", 8))
    choice = response["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["message"]["content"] == plain["choices"][0]["message"]["content"]  # asking changes no answer
    assert len(content) == response["usage"]["completion_tokens"] == 8 and choice["finish_reason"] == "length"
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for t in content:
        top = t["top_logprobs"]
        assert len(top) == 3 and [x["logprob"] for x in top] == sorted((x["logprob"] for x in top), reverse=True)
        assert t["logprob"] <= 0 and top[0]["token"] == t["token"] and top[0]["logprob"] == t["logprob"]  # greedy
        assert sum(math.exp(x["logprob"]) for x in top) <= 1 + 1e-6
        assert t["bytes"] == list(t["token"].encode())
    # The first token's log-probability is the model's own: the log-softmax of its logits on the same prompt.
    folder = merged_model[0]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image", "url": load_records(eval_data)[0].image_path},
                                             {"type": "text", "text": "OCR"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        first = torch.log_softmax(model(**inputs).logits[0, -1].float(), dim=-1)
    assert abs(first.max().item() - content[0]["logprob"]) < 1e-4
    with requests.Session() as s:
        refused = s.post(url + "/v1/chat/completions", timeout=60, json={**body, "logprobs": False})
        assert refused.status_code == 400 and "top_logprobs" in refused.text
        assert s.post(url + "/v1/chat/completions", timeout=60, json={**body, "stop": [1]}).status_code == 400


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_answer_as_one_at_a_time(merged_model, images, tmp_path):
    """Eight clients at once on a batching server get what a one-at-a-time server answers, token for token."""
    bodies = [{**build_request("m", image, INSTRUCTIONS[i % 2], 6 + i % 5), "logprobs": True}
              for i, image in enumerate(images)]
    answers = {}
    for mode, flags in (("sequential", ["--max-batch-size", "1"]), ("batched", [])):
        with start_server(merged_model[0], served_model_name="m", env=eval_env(), startup_timeout=180,
                          extra_args=flags) as (url, _):
            with requests.Session() as s, ThreadPoolExecutor(8 if mode == "batched" else 1) as pool:
                s.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8))
                answers[mode] = list(pool.map(lambda b: _chat(s, url, b)["choices"][0], bodies))
                stats = s.get(url + "/stats", timeout=10).json()
        sizes = [int(k) for k in stats["batches"]]
        assert stats["requests"] == len(bodies), stats
        assert max(sizes) > 1 if mode == "batched" else sizes == [1], (mode, stats)
    for one, together in zip(answers["sequential"], answers["batched"]):
        assert together["message"]["content"] == one["message"]["content"]
        assert together["finish_reason"] == one["finish_reason"]
        assert [t["token"] for t in together["logprobs"]["content"]] == [t["token"] for t in one["logprobs"]["content"]]
        for a, b in zip(together["logprobs"]["content"], one["logprobs"]["content"]):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)


def test_generate_batch_matches_one_at_a_time_with_padding_limits_and_stops(merged_model, eval_data):
    """In process: one batch of prompts of two lengths, each with its own max_new_tokens and stop strings."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gemma_ocr.serving.generation import GenerationJob, generate_batch

    torch.set_num_threads(1)
    folder = merged_model[0]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    config = model.generation_config
    config.do_sample = False
    jobs = []
    for i, record in enumerate(load_records(eval_data)[:4]):
        messages = [{"role": "user", "content": [{"type": "image", "url": record.image_path},
                                                 {"type": "text", "text": INSTRUCTIONS[i % 2]}]}]
        inputs = dict(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt"))
        job_config = type(config).from_dict({**config.to_dict(), "max_new_tokens": 5 + 2 * i})
        jobs.append((inputs, job_config))
    alone = [generate_batch([GenerationJob(model, processor, x, c, top_logprobs=0)])[0] for x, c in jobs]
    assert len({x["input_ids"].shape[-1] for x, _ in jobs}) == 2
    stop = alone[3].text[3:5]
    together = generate_batch([GenerationJob(model, processor, x, c, stop=(stop,) if i == 3 else (), top_logprobs=0)
                               for i, (x, c) in enumerate(jobs)])
    for i, (a, b) in enumerate(zip(alone[:3], together[:3])):
        assert b.token_ids == a.token_ids and b.text == a.text and len(b.token_ids) == 5 + 2 * i
        assert b.finish_reason == a.finish_reason == "length"
        assert [t.logprob for t in b.logprobs] == pytest.approx([t.logprob for t in a.logprobs], abs=1e-4)
    assert together[3].text == alone[3].text[: alone[3].text.find(stop)]
    assert together[3].finish_reason == "stop" and together[3].stop_string == stop


def test_requests_carry_an_id_and_stats_say_how_the_server_batched(tiny_server, images):
    url, name = tiny_server
    with requests.Session() as s:
        given = s.post(url + "/v1/chat/completions", json=build_request(name, images[0], "OCR", 2), timeout=60,
                       headers={"x-request-id": "mine-1"})
        made = s.post(url + "/v1/chat/completions", json=build_request(name, images[0], "OCR", 2), timeout=60)
        stats = s.get(url + "/stats", timeout=10).json()
    assert given.headers["x-request-id"] == "mine-1" and given.json()["id"] == "mine-1"
    assert made.headers["x-request-id"] == made.json()["id"] != "mine-1"
    assert stats["max_batch_size"] == 8 and stats["requests"] >= 2 and sum(stats["batches"].values()) >= 1


def test_chat_bodies_that_are_not_json_objects_are_400_with_the_openai_error_body(tiny_server, images):
    """A chat completion whose body is not a JSON object is the client's error: HTTP 400 with the OpenAI error body,
    its request id kept; a model not served is 404 naming it; the next request is answered as usual."""
    url, name = tiny_server
    with requests.Session() as s:
        not_json = s.post(url + "/v1/chat/completions", data=b"{not json", timeout=30,
                          headers={"content-type": "application/json", "x-request-id": "bad-1"})
        a_list = s.post(url + "/v1/chat/completions", json=[1, 2], timeout=30)
        unknown = s.post(url + "/v1/chat/completions", json=build_request("nope", images[0], "OCR", 2), timeout=30)
        fine = s.post(url + "/v1/chat/completions", json=build_request(name, images[0], "OCR", 2), timeout=60)
    assert not_json.status_code == 400 and not_json.headers["x-request-id"] == "bad-1", not_json.text
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert a_list.status_code == 400 and "JSON object" in a_list.json()["error"]["message"]
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"] and unknown.headers["x-request-id"]
    assert unknown.json()["error"]["param"] == "model"
    assert fine.status_code == 200 and fine.json()["choices"][0]["message"]["content"] is not None


def test_each_set_of_request_options_gets_its_own_generation_settings(tiny_server, images):
    """Generation configs are made once per set of request options: requests that differ in one option only
    (max_tokens, a seed) still get their own, in any order."""
    url, name = tiny_server
    short, longer = build_request(name, images[0], "OCR", 1), build_request(name, images[0], "OCR", 6)
    with requests.Session() as s:
        tokens = [_chat(s, url, body)["usage"]["completion_tokens"] for body in (short, longer, short, longer)]
        seeded = [_chat(s, url, {**longer, "seed": seed})["choices"][0]["message"]["content"] for seed in (1, 2)]
        plain = _chat(s, url, longer)["choices"][0]["message"]["content"]
    assert tokens[0] == tokens[2] == 1 and 1 < tokens[1] == tokens[3] <= 6, tokens
    assert seeded == [plain, plain]  # greedy: a seed changes nothing, and is no new batch setting


def test_streaming_runs_through_the_same_thread_and_stops_at_a_stop_string(tiny_server, images):
    """The stream is server-sent events in the OpenAI chunk layout, ending with ``data: [DONE]``."""
    import openai

    url, name = tiny_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60)
    messages = build_request(name, images[0], "OCR", 12)["messages"]
    full = client.chat.completions.create(model=name, temperature=0, max_tokens=12, messages=messages)
    text = full.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=name, temperature=0, max_tokens=12, messages=messages, stream=True) if c.choices)
    assert streamed == text
    stop = text[2:4]
    chunks = list(client.chat.completions.create(model=name, temperature=0, max_tokens=12, messages=messages,
                                                 stream=True, stop=[stop]))
    cut = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the stream ends before the stop string, as the whole answer does (text that may begin one waits)
    assert cut == text[: text.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens >= 1
    raw = requests.post(url + "/v1/chat/completions", timeout=60, stream=True,
                        json={**build_request(name, images[0], "OCR", 4), "stream": True, "logprobs": True})
    events = [line for line in raw.iter_lines(decode_unicode=True) if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and events[-1] == "data: [DONE]"
    bodies = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert bodies[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(b["object"] == "chat.completion.chunk" and b["id"] == raw.headers["x-request-id"] for b in bodies)
    streamed_logprobs = [t for b in bodies for t in (b["choices"][0].get("logprobs") or {}).get("content", [])]
    assert len(streamed_logprobs) == bodies[-1]["usage"]["completion_tokens"] == 4


def test_indexed_masks_give_the_same_logits_and_answers(merged_model, eval_data):
    """Gemma 3's masks built by broadcasting (the embedded server's) equal transformers' vmap-built ones:
    the same logits on a left-padded batch with two prompt lengths, and the same greedy answers."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gemma_ocr.serving.generation import GenerationJob, generate_batch
    from gemma_ocr.serving.indexed_masks import INDEXED_SDPA, use_indexed_masks

    torch.set_num_threads(1)
    folder = merged_model[0]
    processor = AutoProcessor.from_pretrained(folder)
    vmapped, indexed = (AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval() for _ in "ab")
    assert vmapped.config._attn_implementation == "sdpa"
    assert use_indexed_masks(indexed) and indexed.config.text_config._attn_implementation == INDEXED_SDPA
    assert use_indexed_masks(indexed)  # again: no change
    messages = [[{"role": "user", "content": [{"type": "image", "url": r.image_path},
                                              {"type": "text", "text": INSTRUCTIONS[i % 2]}]}]
                for i, r in enumerate(load_records(eval_data)[:4])]
    batch = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                          return_tensors="pt", padding=True, padding_side="left")
    assert not batch["attention_mask"].all()  # padded
    with torch.no_grad():
        assert torch.equal(vmapped(**batch).logits, indexed(**batch).logits)
    config = vmapped.generation_config
    config.do_sample, config.max_new_tokens = False, 8
    prompts = [dict(processor.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                  return_tensors="pt")) for m in messages]
    answers = [[r.token_ids for r in generate_batch([GenerationJob(model, processor, x, config) for x in prompts])]
               for model in (vmapped, indexed)]
    assert answers[0] == answers[1]


def test_prompts_prepared_together_are_those_prepared_alone(merged_model, eval_data):
    """One processor call for a batch's chats (left-padded, then split) gives each chat the tensors it gets alone,
    and those are the tensors the processor makes for it (NumPy made torch, the same dtypes and values)."""
    import torch
    from transformers import AutoProcessor

    from gemma_ocr.serving.generation import ChatPrompt, prepare_prompts

    processor = AutoProcessor.from_pretrained(merged_model[0])
    prompts = [ChatPrompt([{"role": "user", "content": [{"type": "image", "url": r.image_path},
                                                        {"type": "text", "text": INSTRUCTIONS[i % 2]}]}])
               for i, r in enumerate(load_records(eval_data)[:4])]
    together = prepare_prompts(processor, prompts)
    alone = [prepare_prompts(processor, [p])[0] for p in prompts]
    assert len({x["input_ids"].shape[-1] for x in alone}) == 2  # two lengths: the batch call padded
    for a, b in zip(alone, together):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    for prompt, a in zip(prompts, alone):
        own = processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")
        assert own.keys() == a.keys()
        assert all(own[k].dtype == a[k].dtype and torch.equal(own[k], a[k]) for k in a), [k for k in a if not torch.equal(own[k], a[k])]


def test_a_broken_image_fails_only_its_own_request_in_a_batch(tiny_server, images):
    url, name = tiny_server
    bodies = [build_request(name, image, "OCR", 4) for image in images[:5]]
    bodies.insert(2, build_request(name, "data:image/png;base64," + base64.b64encode(b"not a png").decode(), "OCR", 4))
    with requests.Session() as s, ThreadPoolExecutor(len(bodies)) as pool:
        s.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=len(bodies)))
        codes = list(pool.map(lambda b: s.post(url + "/v1/chat/completions", json=b, timeout=60).status_code, bodies))
        alone = s.post(url + "/v1/chat/completions", json=bodies[0], timeout=60)
    assert codes[2] >= 400 and codes[:2] + codes[3:] == [200] * 5, codes
    assert alone.status_code == 200


def test_torch_threads_reach_the_embedded_server(merged_model):
    """serve.py --torch-threads N passes through to the server process, whatever OMP_NUM_THREADS says."""
    env = {**eval_env(), "OMP_NUM_THREADS": "2"}
    with start_server(merged_model[0], env=env, startup_timeout=180, extra_args=["--torch-threads", "1"]) as (url, _):
        assert requests.get(url + "/stats", timeout=10).json()["torch_threads"] == 1


def test_a_forming_batch_prepares_its_prompts_while_the_rest_is_on_its_way(merged_model, eval_data):
    """In process: the prompt of a request taken into a batch is made while the batch waits for one still on its
    way; the late one joins the same batch, and both get their answers."""
    import time

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gemma_ocr.serving.batching import BatchingGenerateManager
    from gemma_ocr.serving.generation import ChatPrompt, GenerationJob

    torch.set_num_threads(1)
    folder = merged_model[0]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    config = type(model.generation_config).from_dict({**model.generation_config.to_dict(), "do_sample": False,
                                                      "max_new_tokens": 4})
    prompts = [ChatPrompt([{"role": "user", "content": [{"type": "image", "url": r.image_path},
                                                        {"type": "text", "text": "OCR"}]}])
               for r in load_records(eval_data)[:2]]
    manager = BatchingGenerateManager(max_batch_size=8, max_wait=30)
    try:
        late = manager.arrival()
        first = GenerationJob(model, processor, None, config, prompt=prompts[0])
        manager.submit(first)
        deadline = time.monotonic() + 20
        while first.inputs is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.inputs is not None and not first.future.done()  # prepared, still waiting for the late one
        second = GenerationJob(model, processor, None, config, prompt=prompts[1])
        manager.submit(second)
        late.done()
        answers = [job.future.result(timeout=60) for job in (first, second)]
    finally:
        manager.stop()
    assert manager.batch_sizes == {2: 1} and all(a.token_ids for a in answers)
