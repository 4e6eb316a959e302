"""Tiny Gemma 3 vision-language checkpoints built locally, in the layout of a hub checkpoint.

A tiny model has the real architecture (``Gemma3ForConditionalGeneration`` with a SigLIP vision
tower), a real ``Gemma3Processor`` (``Gemma3ImageProcessor`` + a character-level ``GemmaTokenizer``
that holds Gemma's special and newline-run tokens) and Gemma 3's chat template. Its weights are saved
under the names the hub stores (``vision_tower.vision_model.*``, ``language_model.model.*``), which
is what vLLM's Gemma 3 loader maps, so every code path that loads a hub checkpoint loads it the same way.

:func:`build_tiny_gemma3` writes one with random weights: the starting point of the shipped reader
(:mod:`gemma_ocr.modeling.reader`, which pretrains it until it reads) and the "any Gemma 3" of tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open

from gemma_ocr.data import synthetic
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

#: The hub's prefix of the SigLIP tower; transformers 5 saves a model built from a config without ``vision_model``.
HUB_VISION_PREFIX = "vision_tower.vision_model."
#: Gemma's tokenizer has one token per run of 2-31 newlines; vLLM's Gemma 3 prompt processing looks up runs 1-4.
NEWLINE_RUNS = tuple("\n" * n for n in range(2, 32))

# Gemma's special tokens, in Gemma's order where it has one (pad 0, eos 1, bos 2, unk 3, mask 4).
SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
]
BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
END_OF_TURN = "<end_of_turn>"

# Gemma 3's chat template (google/gemma-3-*-it), image parts included.
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

KHMER_DIGITS = "០១២៣៤៥៦៧៨៩"
# Frequent Chinese characters (traditional and simplified) plus full-width punctuation.
COMMON_CJK = (
    "的一是不了人我在有他這这中大來来上國国個个到說说們们為为子和你地出道也時时年得就那要下以生會会自著着去之過过"
    "家學学對对可她裡里後后小麼么心多天而能好都然沒没日於于起還还發发成事只作當当想看文無无開开手十用主行方又如前所本見见"
    "經经頭头面公同三已老從从動动兩两長长知民樣样現现分將将外但身些與与高意進进把法此實实回二理美點点月明其種种聲声全工己話话"
    "兒儿者向情部正名定女問问力機机給给等幾几很業业最間间新什打便位因重被走電电四第門门相次東东政海口使教西再平真聽听世氣气"
    "信北少關关并內内加化由卻却代軍军產产入先山五太水萬万市眼體体別别處处總总才場场師师書书比住員员九笑性通目華华報报立馬马"
    "請请給给結结果辨識识資资料表模型號号碼码金額额期客戶户稱称址話收據据訂订編编台數数量單单價价計计稅税備备註注章字"
    "，。！？；：、「」『』（）《》〈〉【】…—～·"
)
BASE_CHARS = (
    "".join(chr(c) for c in range(0x20, 0x7F))  # printable ASCII
    + "\n\t▁"
    + KHMER_DIGITS
    + "áàâäãåçéèêëíìîïñóòôöõúùûüýÿßæøœ€£¥°±×÷"
)


def _synthetic_alphabet() -> str:
    """Every character the synthetic data generator can write, so none of it needs byte fallback."""
    return "".join(synthetic.CJK_PHRASES) + "".join(synthetic.WORDS) + synthetic.KHMER_DIGITS


def vocabulary(chars: str | None, specials: Sequence[str] = tuple(SPECIAL_TOKENS)) -> dict[str, int]:
    """``specials``, the 256 byte-fallback tokens, one token per character, then the newline runs."""
    vocab: dict[str, int] = {}
    for tok in specials:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    extra = (chars or "") + _synthetic_alphabet()
    for ch in BASE_CHARS + COMMON_CJK + extra:
        if ch == " ":  # Gemma's normaliser turns spaces into "▁"
            continue
        if ch not in vocab:
            vocab[ch] = len(vocab)
    for run in NEWLINE_RUNS:
        vocab[run] = len(vocab)
    return vocab


def newline_merges() -> list[tuple[str, str]]:
    """BPE merges that join newlines into the run tokens, shorter runs first (as Gemma's tokenizer splits them)."""
    return [("\n" * a, "\n" * (n - a)) for n in range(2, len(NEWLINE_RUNS) + 2) for a in range(1, n)]


def build_tokenizer(chars: str | None = None):
    """A character-level ``GemmaTokenizer`` with Gemma 3's special and newline-run tokens (byte fallback for the rest)."""
    from transformers import GemmaTokenizer  # the start-up time of `tiny-model --help`: loads only to build

    vocab = vocabulary(chars)
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=newline_merges(),
        extra_special_tokens={"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_TOKEN},
        additional_special_tokens=None,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
        model_max_length=8192,
    )
    # Turn markers are special (never split, skipped when decoding with skip_special_tokens).
    tok.add_special_tokens({"extra_special_tokens": ["<start_of_turn>", END_OF_TURN]}, replace_extra_special_tokens=False)
    return tok


def build_tiny_gemma3(
    out_dir: str | os.PathLike[str],
    chars: str | None = None,
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 8,
    mm_tokens_per_image: int = 16,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    overwrite: bool = True,
) -> Path:
    """Write a tiny random Gemma 3 VLM (weights in hub layout, config, processor, chat template) to ``out_dir``.

    ``chars``: extra characters to give their own tokens (the training data's alphabet). Both towers have
    2 attention heads and MLPs twice their width; the text tower has one key/value head.
    ``overwrite=False`` keeps a checkpoint another process finished first (parallel first runs).
    Loads back with ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained(out_dir)``.
    """
    check_tiny_shape(image_size, patch_size, mm_tokens_per_image)
    out = Path(out_dir)
    tokenizer = build_tokenizer(chars)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = tiny_gemma3_config(ids, len(tokenizer), image_size, patch_size, mm_tokens_per_image, hidden_size,
                                num_layers, vision_hidden_size, vision_layers)
    model = random_gemma3(config, ids, seed)
    processor = tiny_processor(tokenizer, image_size, mm_tokens_per_image)
    save_atomically(out, model, processor, overwrite)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny Gemma 3: %d parameters, vocabulary %d -> %s", n_params, len(tokenizer), out)
    return out


def check_tiny_shape(image_size: int, patch_size: int, mm_tokens_per_image: int) -> None:
    """One clear error for an image shape the towers cannot take: whole patches, a square of image tokens that
    pools whole patches."""
    if image_size % patch_size:
        raise GemmaOcrError(f"tiny model: image_size {image_size} must be a multiple of patch_size {patch_size}")
    side = int(round(mm_tokens_per_image**0.5))
    if side * side != mm_tokens_per_image or (image_size // patch_size) % side:
        raise GemmaOcrError(
            f"tiny model: mm_tokens_per_image {mm_tokens_per_image} must be a square whose side divides "
            f"{image_size // patch_size} patches per side"
        )


def tiny_gemma3_config(ids: dict[str, int], vocab_size: int, image_size: int, patch_size: int,
                       mm_tokens_per_image: int, hidden_size: int, num_layers: int, vision_hidden_size: int,
                       vision_layers: int):
    """The ``Gemma3Config`` of a tiny model: 2 heads per tower, one key/value head, the last text layer global."""
    from transformers import Gemma3Config  # the start-up time of `tiny-model --help`: transformers loads to build

    heads = 2
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "head_dim": hidden_size // heads,
        "query_pre_attn_scalar": hidden_size // heads,
        "max_position_embeddings": 8192,
        "sliding_window": 512,
        "layer_types": ["sliding_attention"] * (num_layers - 1) + ["full_attention"],
        "pad_token_id": ids["<pad>"],
        "eos_token_id": ids["<eos>"],
        "bos_token_id": ids["<bos>"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": vision_hidden_size,
        "intermediate_size": vision_hidden_size * 2,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
        "layer_norm_eps": 1e-6,
    }
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=mm_tokens_per_image,
        boi_token_index=ids[BOI_TOKEN],
        eoi_token_index=ids[EOI_TOKEN],
        image_token_index=ids[IMAGE_TOKEN],
        initializer_range=0.02,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return config


def random_gemma3(config, ids: dict[str, int], seed: int):
    """The fp32 model of ``config`` with random weights drawn from ``seed`` (the projector too), greedy by default."""
    # the start-up time of `tiny-model --help`: torch and transformers load only to build
    import torch
    from transformers import Gemma3ForConditionalGeneration, GenerationConfig  # (as torch above)

    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32)
    # The projector weight starts at zero in the constructor; give it a random start like a real checkpoint.
    with torch.no_grad():
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.normal_(0.0, 0.02)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids[END_OF_TURN]],
        pad_token_id=ids["<pad>"],
        do_sample=False,
    )
    return model


def tiny_processor(tokenizer, image_size: int, mm_tokens_per_image: int):
    """A ``Gemma3Processor`` of ``image_size`` px images (no pan-and-scan) with Gemma 3's chat template."""
    # the start-up time of `tiny-model --help`: transformers loads only to build
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    image_processor = Gemma3ImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        do_pan_and_scan=False,
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=mm_tokens_per_image,
    )


def to_hub_layout(folder: str | os.PathLike[str]) -> int:
    """Rename a saved checkpoint's SigLIP weights to the hub's ``vision_tower.vision_model.*``; return how many moved.

    transformers 5 reads both layouts (and saves a model it loaded from the hub layout in that layout again),
    vLLM only the hub's. The file is replaced atomically; a checkpoint already in hub layout is left as it is.
    """
    from safetensors.torch import save_file  # it imports torch: the start-up time of `tiny-model --help`

    moved = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        renamed = {_hub_name(key): value for key, value in tensors.items()}
        changed = sum(a != b for a, b in zip(tensors, renamed))
        if changed:
            tmp = path.with_name(path.name + ".tmp")
            save_file(renamed, str(tmp), metadata=metadata)
            os.replace(tmp, path)
            moved += changed
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        data = read_json(index)
        data["weight_map"] = {_hub_name(k): v for k, v in data.get("weight_map", {}).items()}
        atomic_write_json(index, data)
    return moved


def _hub_name(key: str) -> str:
    if key.startswith("vision_tower.") and not key.startswith(HUB_VISION_PREFIX):
        return HUB_VISION_PREFIX + key[len("vision_tower."):]
    return key


def save_atomically(out: Path, model, processor, overwrite: bool) -> None:
    """Write into a temporary sibling folder, then rename: parallel builders (DDP ranks) never see half a checkpoint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        to_hub_layout(tmp)
        processor.save_pretrained(tmp)
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists() and overwrite:
            shutil.rmtree(out)  # rebuilding on purpose (make_tiny_model.py)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():  # not a concurrent builder: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
