"""benchmarks/train_throughput.py as a CPU smoke test on the tiny model and a one-layer Gemma 4 E2B, and the real
Gemma 3 4B/12B and Gemma 4 E2B/E4B shapes on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gemma_ocr.modeling.loading import four_bit_unavailable_reason
from tests.helpers.sft_fixtures import ROOT, sft_env

SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


@pytest.mark.slow
def test_benchmark_smoke_on_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "tiny", "--batch-size", "2", "--steps", "2", "--warmup", "1",
         "--threads", "2",  # each forked mode starts its own OpenMP threads
         "--work-dir", str(tmp_path / "work"), "--json-out", str(out)],
        capture_output=True, text=True, timeout=300, env=sft_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["plain-bf16", "plain-nf4", "default", "default-nf4", "lowmem-nf4", "unsloth"]
    for mode in ("plain-bf16", "default"):
        r = results[mode]
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > r["samples_per_s"], r
        assert r["steps_timed"] == 2 and r["elapsed_s"] > 0
        assert (r.get("peak_rss_gb") or r.get("peak_alloc_gb")) > 0
    assert results["default"]["switches"]["fast_path"] is True
    # the same function in fp32: the default path's loss on the fixed batch equals the baseline's
    assert results["default"]["loss_ok"] is True and results["default"]["loss_rel_diff"] < 1e-4
    if four_bit_unavailable_reason() is None:  # nf4 QLoRA runs here (on a CPU: bitsandbytes >= 0.48)
        assert results["plain-nf4"]["weights"] == "nf4"
        for mode in ("default-nf4", "lowmem-nf4"):
            assert results[mode]["weights"] == "nf4" and results[mode]["samples_per_s"] > 0
            assert results[mode]["switches"]["lean_kbit"] is True
            assert results[mode]["loss_ok"] is True, results[mode]["loss_rel_diff"]
        assert results["lowmem-nf4"]["switches"]["activation_offloading"] is True
    else:
        for mode in ("plain-nf4", "default-nf4", "lowmem-nf4"):
            assert "needs bitsandbytes" in results[mode]["skipped"]
    if not torch.cuda.is_available():
        assert "needs CUDA" in results["unsloth"]["skipped"]
    table = proc.stdout
    assert "| mode | path | weights | samples/s | tokens/s |" in table
    assert "loss default:" in table and "OK" in table
    assert "MFU = FLOPs/sample" in table
    assert report["spec"]["stats"]["patches_per_image"] == 64  # tiny: 64 px images, 8 px patches
    tok = report["spec"]["token_stats"]
    assert tok["tokens"] > tok["labels"] > 0 and 0.0 <= tok["pad_share"] < 0.5
    assert f"padding {100 * tok['pad_share']:.1f}% of batch positions" in table


@pytest.mark.parametrize("args, message", [
    (["--modes", "plain-bf16,turbo"], "unknown turbo"),
    (["--arch", "tiny", "--layers", "2"], "--layers takes a number >= 1 and goes with --arch 4b or 12b"),
    (["--arch", "4b", "--layers", "0"], "--layers takes a number >= 1"),
    (["--arch", "gemma4-e2b", "--layers", "0"], "--layers takes a number >= 1"),
])
def test_bad_arguments_are_one_clear_line(args, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=sft_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_real_architectures_have_the_public_sizes():
    from transformers import Gemma3ForConditionalGeneration

    from benchmarks.architectures import gemma3_config, parameter_stats
    from gemma_ocr.modeling.tiny import SPECIAL_TOKENS, build_tokenizer

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    expected = {"4b": (4.30e9, 34, 2560), "12b": (12.19e9, 48, 3840)}
    for arch, (total, layers, hidden) in expected.items():
        config = gemma3_config(arch, ids)
        with torch.device("meta"):
            model = Gemma3ForConditionalGeneration(config)
        stats = parameter_stats(model)
        assert stats["total_params"] == pytest.approx(total, rel=5e-3), (arch, stats["total_params"])
        assert (stats["text_layers"], stats["text_hidden"]) == (layers, hidden)
        assert stats["vision_params"] == pytest.approx(4.17e8, rel=5e-3)
        assert stats["patches_per_image"] == 4096 and stats["mm_tokens_per_image"] == 256
        types = config.text_config.layer_types
        assert types[:6] == ["sliding_attention"] * 5 + ["full_attention"] and types.count("full_attention") == layers // 6
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_shallow_architecture_keeps_the_real_widths():
    from gemma_ocr.errors import GemmaOcrError
    from benchmarks.architectures import gemma3_config
    from gemma_ocr.modeling.tiny import SPECIAL_TOKENS, build_tokenizer

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    full = gemma3_config("4b", ids)
    config = gemma3_config("4b", ids, layers=6)
    stats = meta_stats(config)
    assert (stats["text_layers"], stats["vision_layers"]) == (6, 6)
    assert config.text_config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    full_stats = meta_stats(full)
    for key in ("text_hidden", "vision_hidden", "vocab_size", "patches_per_image", "mm_tokens_per_image"):
        assert stats[key] == full_stats[key], key
    assert gemma3_config("12b", ids, layers=100).text_config.num_hidden_layers == 48  # never more than the real
    with pytest.raises(GemmaOcrError, match="layers must be >= 1"):
        gemma3_config("4b", ids, layers=0)


def meta_stats(config) -> dict:
    """parameter_stats of a model built on the meta device (no memory)."""
    from transformers import Gemma3ForConditionalGeneration

    from benchmarks.architectures import parameter_stats

    with torch.device("meta"):
        return parameter_stats(Gemma3ForConditionalGeneration(config))


def gemma4_ids() -> dict[str, int]:
    from gemma_ocr.modeling import tiny_gemma4

    tok = tiny_gemma4.build_gemma4_tokenizer()
    return {t: tok.convert_tokens_to_ids(t) for t in tiny_gemma4.SPECIAL_TOKENS}


def gemma4_meta_stats(config) -> dict:
    from transformers import Gemma4ForConditionalGeneration

    from benchmarks.architectures import parameter_stats

    with torch.device("meta"):
        return parameter_stats(Gemma4ForConditionalGeneration(config))


# published totals with embeddings (and the audio tower): E2B ~5.1B, E4B ~8B; the tolerance is that of "~8B"
@pytest.mark.parametrize("arch, total, layers, hidden, kv_heads, shared", [
    ("e2b", 5.1e9, 35, 1536, 1, 20),
    ("e4b", 8.0e9, 42, 2560, 2, 18),
])
def test_gemma4_architectures_have_the_public_sizes(arch, total, layers, hidden, kv_heads, shared):
    from benchmarks.architectures import gemma4_config

    config = gemma4_config(arch, gemma4_ids(), audio=True)
    stats = gemma4_meta_stats(config)
    assert stats["total_params"] == pytest.approx(total, rel=1e-2), stats["total_params"]
    text = config.text_config
    assert (stats["text_layers"], stats["text_hidden"], text.num_key_value_heads) == (layers, hidden, kv_heads)
    assert (text.hidden_size_per_layer_input, text.num_kv_shared_layers, text.vocab_size) == (256, shared, 262144)
    assert stats["per_layer_embedding_params"] == 262144 * layers * 256
    assert (stats["vision_hidden"], stats["vision_layers"], stats["mm_tokens_per_image"]) == (768, 16, 280)
    assert stats["patches_per_image"] == 280 * 9 and stats["audio_params"] > 0
    assert config.to_dict()["text_config"]["global_head_dim"] == 512  # written to config.json, where vLLM reads it
    without_audio = gemma4_meta_stats(gemma4_config(arch, gemma4_ids()))
    audio_embedder = stats["total_params"] - without_audio["total_params"] - stats["audio_params"]
    assert 0 < audio_embedder < 1e7  # the benchmark's build leaves out the audio tower and its embedder only
    assert without_audio["audio_params"] == 0 and without_audio["text_params_no_embedding"] == stats[
        "text_params_no_embedding"]


def test_shallow_gemma4_keeps_the_real_widths_and_a_share_of_kv_sharing():
    from benchmarks.architectures import gemma4_config
    from gemma_ocr.errors import GemmaOcrError

    ids = gemma4_ids()
    full, shallow = gemma4_meta_stats(gemma4_config("e2b", ids)), gemma4_meta_stats(gemma4_config("e2b", ids, 10))
    for key in ("text_hidden", "vision_hidden", "vocab_size", "patches_per_image", "mm_tokens_per_image"):
        assert shallow[key] == full[key], key
    assert (shallow["text_layers"], shallow["vision_layers"], shallow["kv_shared_layers"]) == (10, 10, 5)
    types = gemma4_config("e2b", ids, 10).text_config.layer_types
    assert types == (["sliding_attention"] * 4 + ["full_attention"]) * 2
    assert gemma4_config("e4b", ids, 1).text_config.num_kv_shared_layers == 0  # no producer of a cache left to share
    with pytest.raises(GemmaOcrError, match="unknown Gemma 4 architecture"):
        gemma4_config("31b", ids)


@pytest.mark.e2e  # a 262k-token vocabulary: about a minute on one thread
def test_benchmark_trains_a_one_layer_gemma4_e2b(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "gemma4-e2b", "--layers", "1", "--modes", "default",
         "--batch-size", "1", "--steps", "2", "--warmup", "0", "--work-dir", str(tmp_path / "work"),
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=300, env=sft_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    stats, result = report["spec"]["stats"], report["results"]["default"]
    assert (stats["arch"], stats["text_layers"], stats["text_hidden"], stats["vocab_size"]) == (
        "gemma4-e2b", 1, 1536, 262144)
    assert stats["mm_tokens_per_image"] == 280 and report["spec"]["token_stats"]["tokens"] > 280
    assert result["steps_timed"] == 1 and result["samples_per_s"] > 0 and result["fixed_loss"] > 0
    assert report["header"].startswith("Gemma 4 gemma4-e2b, shallow: 1 text and 1 vision layers")
    config = json.loads((tmp_path / "work" / "gemma4-e2b-1layers" / "config.json").read_text())
    assert config["architectures"] == ["Gemma4ForConditionalGeneration"]
    assert config["text_config"]["global_head_dim"] == 512
