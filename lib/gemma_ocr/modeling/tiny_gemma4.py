"""Tiny Gemma 4 vision-language checkpoints built locally, in the layout of a hub checkpoint.

The Gemma 4 counterpart of :mod:`gemma_ocr.modeling.tiny`: a real ``Gemma4ForConditionalGeneration`` with
random weights at tiny widths (no per-layer embeddings, no mixture of experts, no audio tower; vision pooling 2,
since transformers' pooling 1 path is broken), a real ``Gemma4Processor`` (``Gemma4ImageProcessor``, a
character-level ``GemmaTokenizer`` holding Gemma 4's special tokens, the audio feature extractor and video
processor with their defaults, as the processor requires all four) and the project's own Gemma 4 chat template
(``<bos><|turn>user\\n<|image|>...<turn|>\\n<|turn>model\\n``, a native system turn, ``enable_thinking`` putting
``<|think|>`` in it).

transformers saves Gemma 4 weights under the hub's names already (``model.vision_tower.*``,
``model.embed_vision.*``, ``model.language_model.*``), which vLLM's Gemma 4 loader maps. The text tower's
``global_head_dim`` (its full-attention layers' head width, 512 unless given) is set to ``head_dim`` and written
to config.json, where vLLM reads it. The vision config's ``default_output_length`` (vLLM's image-token budget
when none is given) is the image processor's budget.

One checkpoint serves every image-token budget (70 to 1120): the tower pools whatever patches it gets, and its
position table covers the longest row of patches the largest budget makes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gemma_ocr.modeling.families import GEMMA4
from gemma_ocr.modeling.tiny import newline_merges, save_atomically, vocabulary

log = logging.getLogger(__name__)

IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN = "<|image|>", "<|image>", "<image|>"
AUDIO_TOKEN, BOA_TOKEN, EOA_TOKEN = "<|audio|>", "<|audio>", "<audio|>"
VIDEO_TOKEN = "<|video|>"
START_OF_TURN, END_OF_TURN = GEMMA4.start_of_turn, GEMMA4.end_of_turn
#: Gemma 4's special tokens (pad 0, eos 1, bos 2 as in Gemma's tokenizer), by the tokenizer attribute naming each.
NAMED_SPECIALS = {
    "image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN,
    "audio_token": AUDIO_TOKEN, "boa_token": BOA_TOKEN, "eoa_token": EOA_TOKEN,  # the processor needs them, audio or not
    "sot_token": START_OF_TURN, "eot_token": END_OF_TURN, "soc_token": "<|channel>", "eoc_token": "<channel|>",
    "think_token": "<|think|>",
}
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *NAMED_SPECIALS.values(), VIDEO_TOKEN]
#: The image-token budget the tiny processor uses unless told (the smallest: the fastest tests).
DEFAULT_BUDGET = 70

# The project's Gemma 4 chat template: Google's turn format for text and images (no tools, no audio or video).
# An assistant text drops a thinking channel (<|channel>...<channel|>) before its answer, as Google's does.
CHAT_TEMPLATE = (
    "{%- set enable_thinking = enable_thinking | default(false) -%}\n"
    "{{- bos_token -}}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- set has_system = messages and messages[0]['role'] in ['system', 'developer'] -%}\n"
    "{%- if enable_thinking or has_system -%}\n"
    "    {{- '<|turn>system\\n' -}}\n"
    "    {%- if enable_thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}\n"
    "    {%- if has_system -%}\n"
    "        {%- if messages[0]['content'] is string -%}\n"
    "            {{- messages[0]['content'] | trim -}}\n"
    "        {%- else -%}\n"
    "            {%- for item in messages[0]['content'] -%}{{- item['text'] | trim -}}{%- endfor -%}\n"
    "        {%- endif -%}\n"
    "        {%- set loop_messages = messages[1:] -%}\n"
    "    {%- endif -%}\n"
    "    {{- '<turn|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "    {{- '<|turn>' + role + '\\n' -}}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {%- set items = [{'type': 'text', 'text': message['content']}] -%}\n"
    "    {%- else -%}\n"
    "        {%- set items = message['content'] -%}\n"
    "    {%- endif -%}\n"
    "    {%- for item in items -%}\n"
    "        {%- if item['type'] in ['image', 'image_url'] -%}\n"
    "            {{- '<|image|>' -}}\n"
    "        {%- elif item['type'] == 'text' and role == 'model' -%}\n"
    "            {{- item['text'].split('<channel|>')[-1] | trim -}}\n"
    "        {%- elif item['type'] == 'text' -%}\n"
    "            {{- item['text'] | trim -}}\n"
    "        {%- endif -%}\n"
    "    {%- endfor -%}\n"
    "    {{- '<turn|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}\n"
)


def build_gemma4_tokenizer(chars: str | None = None):
    """A character-level ``GemmaTokenizer`` with Gemma 4's special tokens and Gemma's newline runs (no bos added:
    the chat template writes it)."""
    from transformers import GemmaTokenizer  # the start-up time of `tiny-model --help`: loads only to build

    return GemmaTokenizer(
        vocab=vocabulary(chars, SPECIAL_TOKENS),
        merges=newline_merges(),
        extra_special_tokens=dict(NAMED_SPECIALS),
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        model_max_length=8192,
    )


def tiny_gemma4_config(ids: dict[str, int], vocab_size: int, patch_size: int, hidden_size: int, num_layers: int,
                       vision_hidden_size: int, vision_layers: int, budget: int, pooling: int = 2):
    """The ``Gemma4Config`` of a tiny model: 2 heads per tower, one text key/value head, the last text layer global."""
    from transformers import Gemma4Config  # the start-up time of `tiny-model --help`: transformers loads to build

    heads = 2
    head_dim = hidden_size // heads
    text_config = {
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers, "num_attention_heads": heads, "num_key_value_heads": 1,
        "head_dim": head_dim, "global_head_dim": head_dim,
        "layer_types": ["sliding_attention"] * (num_layers - 1) + ["full_attention"],
        "sliding_window": 512, "max_position_embeddings": 8192,
        "hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": vocab_size,  # no per-layer embeddings
        "num_kv_shared_layers": 0, "enable_moe_block": False, "attention_k_eq_v": False,
        "use_bidirectional_attention": None, "final_logit_softcapping": 30.0,
        "pad_token_id": ids["<pad>"], "eos_token_id": ids["<eos>"], "bos_token_id": ids["<bos>"],
    }
    vision_config = {
        "hidden_size": vision_hidden_size, "intermediate_size": vision_hidden_size * 2,
        "num_hidden_layers": vision_layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "head_dim": vision_hidden_size // heads, "patch_size": patch_size, "pooling_kernel_size": pooling,
        # longer than the longest row of patches: a one-token-high strip at the largest budget
        "position_embedding_size": max(GEMMA4.budget_values) * pooling,
        "default_output_length": budget,  # not a declared field; vLLM's budget when none is given
    }
    config = Gemma4Config(
        text_config=text_config, vision_config=vision_config, audio_config=None,
        image_token_id=ids[IMAGE_TOKEN], boi_token_id=ids[BOI_TOKEN], eoi_token_id=ids[EOI_TOKEN],
        audio_token_id=ids[AUDIO_TOKEN], boa_token_id=ids[BOA_TOKEN], eoa_token_index=ids[EOA_TOKEN],
        video_token_id=ids[VIDEO_TOKEN], initializer_range=0.02,
    )
    config.text_config.global_head_dim = head_dim  # a constructor argument config.json does not keep unless set
    config.architectures = [GEMMA4.architecture]
    return config


def random_gemma4(config, ids: dict[str, int], seed: int, from_scratch: bool = False):
    """The fp32 model of ``config`` with random weights drawn from ``seed``, greedy by default.

    ``from_scratch``: a start made to be trained from random weights. transformers starts the vision position
    table at all ones (a constant 2 on every patch, which drowns the pixels) and the q/k norms at ones with an
    attention scale of 1 (logits of standard deviation sqrt(head_dim): near one-hot attention that barely
    learns); this draws the table from N(0, 0.02) and starts the q/k norms at head_dim ** -0.25 (unit logits)."""
    # the start-up time of `tiny-model --help`: torch and transformers load only to build
    import torch
    from transformers import Gemma4ForConditionalGeneration, GenerationConfig  # (as torch above)

    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).to(torch.float32)
    if from_scratch:
        with torch.no_grad():
            model.model.vision_tower.patch_embedder.position_embedding_table.normal_(0.0, 0.02)
            for name, module in model.named_modules():
                if name.endswith(("q_norm", "k_norm")):
                    module.weight.fill_(module.weight.numel() ** -0.25)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids[END_OF_TURN]], pad_token_id=ids["<pad>"],
        do_sample=False,
    )
    return model


def tiny_gemma4_processor(tokenizer, patch_size: int, budget: int, pooling: int = 2):
    """A ``Gemma4Processor`` of ``budget`` image tokens per image with the project's Gemma 4 chat template."""
    # the start-up time of `tiny-model --help`: transformers loads only to build
    from transformers import (Gemma4AudioFeatureExtractor, Gemma4ImageProcessor, Gemma4Processor,
                              Gemma4VideoProcessor)

    vision: dict[str, Any] = {"patch_size": patch_size, "pooling_kernel_size": pooling, "max_soft_tokens": budget}
    return Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(**vision),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(patch_size=patch_size, pooling_kernel_size=pooling),
        chat_template=CHAT_TEMPLATE,
        image_seq_length=budget,
    )


def build_tiny_gemma4(
    out_dir: str | os.PathLike[str],
    chars: str | None = None,
    seed: int = 0,
    patch_size: int = 8,
    image_token_budget: int = DEFAULT_BUDGET,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    overwrite: bool = True,
    from_scratch: bool = False,
) -> Path:
    """Write a tiny random Gemma 4 VLM (hub weight layout, config, processor, chat template) to ``out_dir``.

    ``chars``: extra characters to give their own tokens. ``image_token_budget``: the processor's
    ``max_soft_tokens`` (70, 140, 280, 560 or 1120). ``from_scratch``: see :func:`random_gemma4`. ``overwrite=False`` keeps a checkpoint another process
    finished first. Loads back with ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained(out_dir)``.
    """
    GEMMA4.budget_kwargs(image_token_budget)  # one line for a budget the processor would refuse
    tokenizer = build_gemma4_tokenizer(chars)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = tiny_gemma4_config(ids, len(tokenizer), patch_size, hidden_size, num_layers, vision_hidden_size,
                                vision_layers, image_token_budget)
    model = random_gemma4(config, ids, seed, from_scratch)
    processor = tiny_gemma4_processor(tokenizer, patch_size, image_token_budget)
    out = Path(out_dir)
    save_atomically(out, model, processor, overwrite)
    log.info("tiny Gemma 4: %d parameters, vocabulary %d -> %s", sum(p.numel() for p in model.parameters()),
             len(tokenizer), out)
    return out
