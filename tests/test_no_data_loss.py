"""Nothing lost: no command writes over one of its inputs, and --overwrite replaces only files the project wrote.

Real files in temporary folders, real command-line programs in their own processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.eval_fixtures import eval_env
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.outputs import MANIFEST, OutputFolder, check_outputs_not_inputs


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> content): what must be unchanged after a refusal."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask of this process (and the programs it starts) set to ``mask`` for a while."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def merge_cli(*args: str, check: bool = False):
    return run_cli("gemma_adapter_merge.py", *args, env=eval_env(), timeout=300, check=check)


@pytest.fixture
def base_and_adapter(eval_base_model, eval_adapter, tmp_path) -> Path:
    """A folder X holding a base model (X/base) and its adapter (X/adapter)."""
    x = tmp_path / "X"
    shutil.copytree(eval_base_model, x / "base")
    shutil.copytree(eval_adapter, x / "adapter")
    return x


# ------------------------------------------------------------------------------------------------- the merge

def test_merging_into_the_folder_that_holds_the_base_and_the_adapter_is_refused(base_and_adapter):
    x = base_and_adapter
    before = snapshot(x)
    proc = merge_cli("--lora-dir", str(x / "adapter"), "--base-model", str(x / "base"), "--output-dir", str(x),
                     "--overwrite")
    assert_one_line_error(proc, f"--output_dir {x} holds the adapter (--lora_dir) {x / 'adapter'}", "choose another")
    assert snapshot(x) == before
    # the base alone in it (the adapter elsewhere), the folder named through a symbolic link, or the base itself
    adapter = x.parent / "adapter-elsewhere"
    shutil.copytree(x / "adapter", adapter)
    link = x.parent / "link-to-X"
    link.symlink_to(x, target_is_directory=True)
    for out in (x, link):
        proc = merge_cli("--lora-dir", str(adapter), "--base-model", str(x / "base"), "--output-dir", str(out),
                         "--overwrite")
        assert_one_line_error(proc, f"--output_dir {out} holds the base model {x / 'base'}")
    proc = merge_cli("--lora-dir", str(adapter), "--base-model", str(x / "base"), "--output-dir", str(link / "base"),
                     "--overwrite")
    assert_one_line_error(proc, f"--output_dir {link / 'base'} is the base model {x / 'base'}")
    assert snapshot(x) == before


def test_overwrite_never_deletes_files_the_merge_did_not_write(eval_adapter, tmp_path):
    docs = tmp_path / "docs"
    (docs / "data").mkdir(parents=True)
    (docs / "thesis.txt").write_text("three years of work")
    (docs / "data" / "a.csv").write_text("1,2\n")
    before = snapshot(docs)
    for flags in ((), ("--overwrite",)):
        proc = merge_cli("--lora-dir", str(eval_adapter), "--output-dir", str(docs), "--no-verify", *flags)
        line = assert_one_line_error(proc, f"--output_dir {docs} holds 3 files gemma-ocr merge did not write",
                                     "thesis.txt", "data/a.csv", "choose another --output_dir")
        assert "pass --overwrite" not in line  # the hint never leads to another refusal (or to a loss)
    assert snapshot(docs) == before


def test_overwrite_replaces_an_earlier_merge_and_says_what_it_replaces(eval_adapter, tmp_path):
    out = tmp_path / "merged"
    merge_cli("--lora-dir", str(eval_adapter), "--output-dir", str(out), "--no-verify", check=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    proc = merge_cli("--lora-dir", str(eval_adapter), "--output-dir", str(out), "--no-verify", "--overwrite", check=True)
    replaced = [l for l in proc.stderr.splitlines() if "replacing" in l]
    assert len(replaced) == 1 and f"files an earlier gemma-ocr merge wrote in {out}" in replaced[0]
    assert "config.json" in replaced[0]
    # a file the user added, or a merged file the user edited, makes the folder theirs: refused, nothing changed
    for change in ("added", "edited"):
        if change == "added":
            (out / "notes.txt").write_text("which run this was")
            name = "notes.txt"
        else:
            (out / "notes.txt").unlink()
            cfg = out / "config.json"
            cfg.write_text(cfg.read_text().replace("{", "{\n  \"my_note\": 1,", 1))
            name = "config.json"
        before = snapshot(out)
        proc = merge_cli("--lora-dir", str(eval_adapter), "--output-dir", str(out), "--no-verify", "--overwrite")
        assert_one_line_error(proc, "holds 1 files gemma-ocr merge did not write (or that changed since)", name)
        assert snapshot(out) == before


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_the_merged_folder_keeps_the_users_umask(eval_adapter, tmp_path, mask):
    out = tmp_path / "merged"
    with umask(mask):
        merge_cli("--lora-dir", str(eval_adapter), "--output-dir", str(out), "--no-verify", check=True)
    assert mode(out) == 0o777 & ~mask
    files = sorted(out.iterdir())
    assert any(f.name == "model.safetensors" for f in files) and any(f.name == MANIFEST for f in files)
    assert {f.name: mode(f) for f in files} == {f.name: 0o666 & ~mask for f in files}


# ------------------------------------------------------------------------------------- results files as inputs

def _results(path: Path, name: str, damage: int, seed: int) -> Path:
    from gemma_ocr.scoring.results import ScoringConfig, build_document

    rng = random.Random(seed)
    labels = [f"line {i:04d} abc" for i in range(20)]
    samples = [{"index": i, "image_path": f"/data/{i}.png", "label": l, "status": "ok",
                "prediction": "#" * rng.randint(0, damage) + l[damage:]} for i, l in enumerate(labels)]
    path.write_text(json.dumps(build_document(samples, name, ScoringConfig(ci_resamples=50))), encoding="utf-8")
    return path


def test_compare_never_writes_over_a_results_file(tmp_path):
    base = _results(tmp_path / "base.json", "base", 4, 1)
    ft = _results(tmp_path / "ft.json", "ft", 1, 2)
    before = snapshot(tmp_path)
    proc = run_cli("compare_results.py", str(base), str(ft), "--output", str(ft), "--resamples", "50", check=False)
    assert_one_line_error(proc, f"--output {ft} is the results file {ft}", "choose another --output")
    (tmp_path / "cmp-link.json").symlink_to(base)
    os.link(ft, tmp_path / "ft-hardlink.json")
    before = snapshot(tmp_path)
    for out, named in ((tmp_path / "cmp-link.json", base), (tmp_path / "ft-hardlink.json", ft),
                       (tmp_path / "sub" / ".." / "base.json", base)):
        proc = run_cli("compare_results.py", str(base), str(ft), "--output", str(out), "--resamples", "50", check=False)
        assert_one_line_error(proc, f"--output {out} is the results file {named}")
    assert snapshot(tmp_path) == before
    proc = run_cli("compare_results.py", str(base), str(ft), "--output", str(tmp_path / "cmp.json"), "--resamples", "50")
    assert json.loads((tmp_path / "cmp.json").read_text())["baseline"]["model_name"] == "base"


def test_count_score_never_writes_over_its_input(tmp_path):
    results = _results(tmp_path / "r.json", "m", 2, 3)
    before = snapshot(tmp_path)
    proc = run_cli("count_score.py", "--input", str(results), "--output", str(results), check=False)
    assert_one_line_error(proc, f"--output {results} is the results file (--input) {results}")
    assert snapshot(tmp_path) == before


def test_compare_and_count_score_replace_only_their_own_earlier_output(tmp_path):
    """An --output file that exists is replaced only when the same command wrote it there (a rerun); a user's
    file, or another command's output, is refused and left as it was."""
    base = _results(tmp_path / "base.json", "base", 4, 1)
    ft = _results(tmp_path / "ft.json", "ft", 1, 2)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}', encoding="utf-8")
    compare = ["compare_results.py", str(base), str(ft), "--resamples", "50", "--output"]
    proc = run_cli(*compare, str(notes), check=False)
    assert_one_line_error(proc, "notes.json", "did not write")
    assert notes.read_text(encoding="utf-8") == '{"mine": true}'
    for _ in range(2):  # the second run replaces the first one's comparison
        run_cli(*compare, str(tmp_path / "cmp.json"))
    proc = run_cli("count_score.py", "--input", str(ft), "--output", str(tmp_path / "cmp.json"), check=False)
    assert_one_line_error(proc, "cmp.json", "did not write")
    assert json.loads((tmp_path / "cmp.json").read_text())["baseline"]["model_name"] == "base"
    for _ in range(2):
        run_cli("count_score.py", "--input", str(ft), "--output", str(tmp_path / "ft_norm.json"))


def test_evaluate_never_writes_over_its_data_file_or_an_image(eval_data, tmp_path):
    data = tmp_path / "D.json"
    shutil.copy(eval_data, data)
    records = json.loads(data.read_text())
    # the data's relative image paths resolve from its own folder: point them at the fixture's images
    for r in records:
        r["image_path"] = str((eval_data.parent / r["image_path"]).resolve())
    data.write_text(json.dumps(records), encoding="utf-8")
    image = Path(records[0]["image_path"])
    before, image_bytes = data.read_bytes(), image.read_bytes()
    for flags in ((), ("--no-resume",)):
        proc = run_cli("evaluate.py", "--data-file", str(data), "--output-file", str(data), "--top-k", "5",
                       "--vllm-url", "http://127.0.0.1:9", *flags, check=False)
        line = assert_one_line_error(proc, f"--output-file {data} is the data file (--data-file) {data}",
                                     "choose another --output-file")
        assert "--no-resume" not in line
    proc = run_cli("evaluate.py", "--data-file", str(data), "--output-file", str(image), "--no-resume",
                   "--vllm-url", "http://127.0.0.1:9", check=False)
    assert_one_line_error(proc, f"--output-file {image} is an image of the data file")
    assert data.read_bytes() == before and image.read_bytes() == image_bytes


# ------------------------------------------------------------------------------------------------- the helpers

def test_outputs_are_compared_with_inputs_resolved(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[]")
    folder = tmp_path / "models" / "base"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (tmp_path / "alias").symlink_to(tmp_path / "models", target_is_directory=True)
    inputs = {"the data": data, "the base model": folder}
    for out, words in ((data, "is the data"), (tmp_path / "alias" / "base", "is the base model"),
                       (tmp_path / "models", "holds the base model"), (tmp_path, "holds the data"),
                       (tmp_path / "alias" / ".." / "data.json", "is the data")):
        with pytest.raises(GemmaOcrError, match=words):
            check_outputs_not_inputs(inputs, {"--out": out})
    check_outputs_not_inputs(inputs, {"--out": tmp_path / "results.json", "--dir": folder / "sub"})  # beside, inside
    check_outputs_not_inputs({"the data": None, "images": []}, {"--out": data})  # nothing given, nothing compared


def test_an_output_folder_publishes_only_over_its_own_files(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    folder = OutputFolder(out, "--output-dir", "gemma-ocr errors", overwrite_flag=None)
    with folder.writing() as staged:
        (staged / "report.html").write_text("one")
    assert (out / "report.html").read_text() == "one" and (out / "mine.txt").read_text() == "the user's"
    with folder.writing() as staged:  # a rerun replaces what it wrote
        (staged / "report.html").write_text("two")
    assert (out / "report.html").read_text() == "two"
    with pytest.raises(GemmaOcrError, match="holds 1 files gemma-ocr errors did not write.*mine.txt"):
        with folder.writing() as staged:
            (staged / "report.html").write_text("three")
            (staged / "mine.txt").write_text("not yours")
    assert (out / "report.html").read_text() == "two" and (out / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging folder left


# ------------------------------------------------------------------------------------------ the other commands

def test_training_never_writes_over_its_base_model_or_files_it_did_not_write(eval_base_model, eval_data, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(eval_base_model, base)
    before = snapshot(base)
    common = ("--input-data", str(eval_data), "--print-config")  # the check comes before the settings are printed
    proc = run_cli("sft_gemma.py", "--model-name", str(base), "--lora-output-dir", str(base), *common,
                   env=eval_env(), check=False)
    assert_one_line_error(proc, f"--lora-output-dir {base} is the base model (--model-name) {base}")
    repo = tmp_path / "repo"  # --lora-output-dir . in a checkout: PEFT's model card would replace its README.md
    repo.mkdir()
    (repo / "README.md").write_text("# my project\n")
    proc = run_cli("sft_gemma.py", "--model-name", str(base), "--lora-output-dir", str(repo), *common,
                   env=eval_env(), check=False)
    assert_one_line_error(proc, f"--lora-output-dir {repo} holds 1 files gemma-ocr train did not write", "README.md")
    assert snapshot(base) == before and (repo / "README.md").read_text() == "# my project\n"
    run_cli("sft_gemma.py", "--model-name", str(base), "--lora-output-dir", str(tmp_path / "new"), *common,
            env=eval_env())


def test_the_tiny_model_builder_never_deletes_a_folder_it_did_not_write(merged_model, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("three years of work")
    proc = run_cli("make_tiny_model.py", "--output-dir", str(docs), env=eval_env(), check=False)
    assert_one_line_error(proc, f"--output-dir {docs} holds 1 files gemma-ocr tiny-model did not write", "thesis.txt")
    assert snapshot(docs) == {"thesis.txt": b"three years of work"}
    merged = tmp_path / "merged"  # another command's output (its manifest says so) is not the builder's to replace
    shutil.copytree(merged_model[0], merged)
    before = snapshot(merged)
    proc = run_cli("make_tiny_model.py", "--output-dir", str(merged), env=eval_env(), check=False)
    assert_one_line_error(proc, "files gemma-ocr tiny-model did not write", "model.safetensors")
    assert snapshot(merged) == before


def test_the_search_never_exports_over_its_settings_file(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    config = studies / "s_best_config.json"  # searching again from the best configuration an earlier search exported
    config.write_text(json.dumps({"model_name": "models/tiny-gemma3-reader"}))
    proc = run_cli("hyperparameter_search.py", "--config", str(config), "--study-name", "s", "--studies-dir",
                   str(studies), "--base-output-dir", str(tmp_path / "trials"), "--n-trials", "1", check=False)
    assert_one_line_error(proc, f"the best configuration's export {config} is the settings file {config}",
                          "choose another --study-name or --studies-dir")
    assert sorted(p.name for p in studies.iterdir()) == ["s_best_config.json"]


def test_split_replaces_only_its_own_split(synthetic_raw, tmp_path):
    out = tmp_path / "input"
    out.mkdir()
    (out / "ocr_test.json").write_text('[{"image_path": "mine.png", "ocr_text": "hand-made test set"}]')
    before = snapshot(out)
    proc = run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(out), check=False)
    assert_one_line_error(proc, f"--output-dir {out} holds 1 files gemma-ocr split did not write", "ocr_test.json")
    assert snapshot(out) == before
    (out / "ocr_test.json").unlink()
    run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(out))
    run_cli("split_dataset.py", "--input", str(synthetic_raw), "--output-dir", str(out), "--seed", "3")  # a rerun
    proc = run_cli("split_dataset.py", "--input", str(out / "ocr_test.json"), "--output-dir", str(out), check=False)
    assert_one_line_error(proc, f"--output-dir {out / 'ocr_test.json'} is the raw data (--input)")


def test_the_error_report_never_replaces_a_file_it_did_not_write(tmp_path):
    results = _results(tmp_path / "r.json", "m", 2, 5)
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("<p>my notes</p>")
    proc = run_cli("error_analysis.py", str(results), "--output-dir", str(out), check=False)
    assert_one_line_error(proc, f"--output-dir {out} holds 1 files gemma-ocr errors did not write", "report.html")
    assert snapshot(out) == {"report.html": b"<p>my notes</p>"}
    run_cli("error_analysis.py", str(results), "--output-dir", str(tmp_path))  # beside other files: fine
    assert (tmp_path / "report.html").is_file() and (tmp_path / "r.json").read_bytes() == results.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp") or ".partial-" in p.name]


def test_import_and_transcribe_never_write_over_their_input(synthetic_raw, tmp_path):
    raw = tmp_path / "ocr.json"
    shutil.copy(synthetic_raw, raw)
    data = json.loads(raw.read_text())
    for r in data:  # the copy's images: the fixture's, by absolute path
        r["img_path"] = str((synthetic_raw.parent / r["img_path"]).resolve())
    raw.write_text(json.dumps(data), encoding="utf-8")
    before = raw.read_bytes()
    proc = run_cli("import_ocr_data.py", str(raw), "--output", str(raw), "--force", check=False)
    assert_one_line_error(proc, f"--output {raw} is the source {raw}")
    proc = run_cli("transcribe.py", str(raw), "--output-file", str(raw), "--vllm-url", "http://127.0.0.1:9",
                   check=False)
    assert_one_line_error(proc, f"--output-file {raw} is the input {raw}")
    assert raw.read_bytes() == before


def test_no_setting_may_name_the_config_file_itself(eval_data, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(f"data_file: {eval_data}\ntop_k: 2\nurls: [\"http://127.0.0.1:9\"]\n", encoding="utf-8")
    before = config.read_bytes()
    proc = run_cli("evaluate.py", "--config", str(config), "--output-file", str(config), "--no-resume", check=False)
    assert_one_line_error(proc, f"--output-file {config} is the config file (--config) {config}")
    assert config.read_bytes() == before


def test_synthetic_data_never_renders_over_images_it_did_not_write(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "000000.png").write_bytes(b"my photo")
    proc = run_cli("make_synthetic_data.py", "--output-dir", str(tmp_path), "--n-samples", "2", "--scripts", "latin",
                   check=False)
    assert_one_line_error(proc, f"--output-dir {tmp_path} holds 1 files gemma-ocr synth did not write",
                          "images/000000.png")
    assert snapshot(tmp_path) == {"images/000000.png": b"my photo"}
