"""Merging a LoRA adapter into the tiny Gemma 3: verification, reload, and the errors a user can hit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from tests.helpers.eval_fixtures import ROOT, eval_env

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.merge.adapter import check_disk, lora_keys, merge_adapter, output_folder, resolve_base_model, verify_merge


def test_merge_verifies_logits_and_leaves_no_lora_keys(merged_model, eval_base_model):
    out, report = merged_model
    assert report.verified and report.lora_keys == 0 and lora_keys(out) == []
    assert report.max_abs_diff <= report.tolerance
    # The adapter really changes the model, far beyond the merge error: the check can fail.
    assert report.adapter_effect > 20 * report.max_abs_diff
    assert report.base_model == str(eval_base_model)
    saved = json.loads((out / "merge_report.json").read_text())
    assert saved["verified"] is True


def test_merged_folder_is_a_plain_bf16_gemma3_checkpoint(merged_model):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out, _ = merged_model
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForConditionalGeneration"] and cfg["model_type"] == "gemma3"
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "Gemma3Processor"
    assert (out / "chat_template.jinja").is_file() and (out / "generation_config.json").is_file()
    with safe_open(str(out / "model.safetensors"), framework="pt") as st:
        dtypes = {st.get_tensor(k).dtype for k in st.keys()}
        names = list(st.keys())
    assert dtypes == {torch.bfloat16}
    # the base's hub layout survives the merge: vLLM loads vision_tower.vision_model.*, not vision_tower.embeddings.*
    hub = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.")
    assert all(n.startswith(hub) for n in names) and any(n.startswith("vision_tower.vision_model.") for n in names)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert type(processor).__name__ == "Gemma3Processor"
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR"}]}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<bos><start_of_turn>user\n<start_of_image>") and prompt.endswith("<start_of_turn>model\n")


def test_verification_catches_a_wrong_merge(merged_model, eval_adapter, eval_base_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    out, _ = merged_model
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    key = next(k for k in tensors if "language_model" in k and "q_proj.weight" in k)
    tensors[key] = tensors[key] + torch.full_like(tensors[key], 0.5)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GemmaOcrError, match="merged logits differ"):
        verify_merge(str(broken), str(eval_adapter), str(eval_base_model))


def test_base_model_comes_from_adapter_config_unless_overridden(eval_adapter, eval_base_model):
    assert resolve_base_model(eval_adapter) == str(eval_base_model)
    assert resolve_base_model(eval_adapter, "google/gemma-3-4b-it") == "google/gemma-3-4b-it"


def test_disk_check_names_need_and_free(tmp_path):
    with pytest.raises(GemmaOcrError, match=r"need [\d.]+ GB .*free [\d.]+ GB"):
        check_disk(tmp_path / "out", parameters=10**15)
    need, free = check_disk(tmp_path / "out", parameters=1000)
    assert need == 2400 and free > need


def test_quantized_base_is_refused(eval_adapter, eval_base_model, tmp_path):
    q = tmp_path / "base-4bit"
    shutil.copytree(eval_base_model, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GemmaOcrError, match="16-bit base"):
        merge_adapter(eval_adapter, tmp_path / "out", base_model=str(q))


def test_cli_errors_are_one_line(eval_adapter, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "core/gemma_adapter_merge.py"), *args], capture_output=True,
                              text=True, env=eval_env(), timeout=120)

    r = run("--lora_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "adapter folder not found" in r.stderr and "Traceback" not in r.stderr
    try:
        import unsloth  # noqa: F401
    except Exception:
        r = run("--lora_dir", str(eval_adapter), "--output_dir", str(tmp_path / "u"), "--backend", "unsloth")
        assert r.returncode == 2 and "unsloth is not available" in r.stderr and "Traceback" not in r.stderr


def _merge_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "core/gemma_adapter_merge.py"), *args], capture_output=True,
                          text=True, env=eval_env(), timeout=300)


def test_a_non_empty_output_folder_is_replaced_only_when_asked(eval_adapter, merged_model, tmp_path):
    from tests.helpers.programs import assert_one_line_error

    out = tmp_path / "merged"
    shutil.copytree(merged_model[0], out)  # an earlier merge: its manifest lists its files (copytree keeps their times)
    proc = _merge_cli("--lora_dir", str(eval_adapter), "--output_dir", str(out))
    assert_one_line_error(proc, f"--output_dir {out} is not empty", "model.safetensors", "--overwrite")
    report = merge_adapter(eval_adapter, out, overwrite=True)
    assert report.verified and (out / "model.safetensors").is_file()
    assert json.loads((out / "merge_report.json").read_text())["output_dir"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging folder left behind


def test_an_unwritable_or_full_output_location_is_one_line_and_keeps_the_old_merge(eval_adapter, tmp_path):
    from tests.helpers.programs import assert_one_line_error
    from tests.helpers.output_locations import read_only_folder, small_tmpfs

    with read_only_folder(tmp_path / "ro") as ro:
        proc = _merge_cli("--lora_dir", str(eval_adapter), "--output_dir", str(ro / "merged"))
        assert_one_line_error(proc, f"--output_dir {ro / 'merged'}: its parent folder", "cannot write in")
    with small_tmpfs(tmp_path / "small", size="256k") as small:
        old = small / "merged"
        old.mkdir()
        (old / "config.json").write_text("{}")  # the previous merge, to be kept if the new one cannot be written
        output_folder(old).record(["config.json"])
        proc = _merge_cli("--lora_dir", str(eval_adapter), "--output_dir", str(old), "--overwrite", "--skip-disk-check")
        assert_one_line_error(proc, f"cannot write {old}", "no space left on device", f"{old} is as it was")
        assert sorted(p.name for p in small.iterdir()) == ["merged"] and (old / "config.json").read_text() == "{}"
        assert sorted(p.name for p in old.iterdir()) == [".gemma-ocr-manifest.json", "config.json"]
