"""A read-only or full output location: one line before the work starts, or when a write fails mid-run.

(evaluate.py, transcribe.py and the merge have theirs beside their other tests.)
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from tests.helpers.programs import assert_one_line_error, run_cli
from tests.helpers.output_locations import read_only_folder, small_tmpfs

from gemma_ocr.errors import GemmaOcrError


def test_check_writable_names_the_setting_and_the_reason(tmp_path):
    from gemma_ocr.io import check_writable

    assert check_writable(tmp_path / "new" / "deeper" / "r.json", "--output-file") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    (tmp_path / "plain").write_text("x")
    with pytest.raises(GemmaOcrError, match=r"^--output-dir .*plain/sub: cannot write there \(.*plain is a file, not a folder\)"):
        check_writable(tmp_path / "plain" / "sub", "--output-dir", folder=True)
    with pytest.raises(GemmaOcrError, match="is a folder, not a file"):
        check_writable(tmp_path, "--output-file")
    with read_only_folder(tmp_path / "ro") as ro:
        reason = "read-only file system" if os.geteuid() == 0 else "permission denied"
        with pytest.raises(GemmaOcrError, match=rf"^--output-file .*r.json: cannot write in .*ro \({reason}\)"):
            check_writable(ro / "r.json", "--output-file")


def test_a_failed_atomic_write_keeps_the_previous_file(tmp_path):
    from gemma_ocr.io import atomic_write_text

    with small_tmpfs(tmp_path / "small", size="8k") as small:
        atomic_write_text(small / "f.txt", "first version\n")
        with pytest.raises(GemmaOcrError, match="cannot write .*f.txt \\(no space left on device\\); the previous version"):
            atomic_write_text(small / "f.txt", "x" * 100_000)
        assert (small / "f.txt").read_text() == "first version\n" and [p.name for p in small.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("program, args, flag", [
    ("split_dataset.py", ["--output-dir", "{ro}/input"], "--output-dir"),
    ("import_ocr_data.py", ["{data}", "--output", "{ro}/ocr.json"], "--output"),
    ("make_synthetic_data.py", ["--output-dir", "{ro}/raw", "--n-samples", "3"], "--output-dir"),
])
def test_data_programs_refuse_an_unwritable_output_first(program, args, flag, synthetic_raw, tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        filled = [a.format(ro=ro, data=synthetic_raw) for a in args]
        if program == "split_dataset.py":
            filled += ["--input", str(synthetic_raw)]
        proc = run_cli(program, *filled, check=False, cwd=tmp_path)
        assert_one_line_error(proc, flag, "cannot write in")


def test_a_disk_that_fills_while_rendering_is_one_line(tmp_path):
    with small_tmpfs(tmp_path / "small", size="64k") as small:
        proc = run_cli("make_synthetic_data.py", "--output-dir", str(small / "raw"), "--n-samples", "200",
                       check=False, cwd=tmp_path)
        line = assert_one_line_error(proc, "cannot write", "no space left on device", "of 200 images were written")
        assert "/raw/images/" in line


@pytest.mark.slow
def test_training_and_search_refuse_an_unwritable_output_first(tmp_path, synthetic_raw):
    shutil.copy(synthetic_raw, tmp_path / "data.json")
    with read_only_folder(tmp_path / "ro") as ro:
        proc = run_cli("sft_gemma.py", "--config", "configs/hyperparm_configs/default.json",
                       "--lora-output-dir", str(ro / "adapter"), check=False)
        assert_one_line_error(proc, f"output_dir {ro / 'adapter'}: cannot write in")
        proc = run_cli("hyperparameter_search.py", "--study-name", "ro-test", "--studies-dir", str(tmp_path / "studies"),
                       "--base-output-dir", str(ro / "trials"), "--n-trials", "1", check=False)
        assert_one_line_error(proc, f"--base-output-dir {ro / 'trials'}: cannot write in")
        assert not list((tmp_path / "studies").glob("*.db"))  # refused before the study was created


def test_out_of_room_reads_each_library_s_way_of_saying_it(tmp_path):
    """OSError by its errno, tokenizers and safetensors by their text, torch.save's stream error by the free space."""
    import errno

    from gemma_ocr.io import out_of_room

    stream_error = RuntimeError("basic_ios::clear: iostream error")  # what torch.save raises on a full disk
    assert out_of_room(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == "no space left on device"
    assert out_of_room(Exception("No space left on device (os error 28)"), tmp_path) == "no space left on device"
    assert out_of_room(Exception("failed to write: Disk quota exceeded (os error 122)"), tmp_path) == "disk quota exceeded"
    assert out_of_room(ValueError("bad value"), tmp_path) is None
    assert out_of_room(stream_error, tmp_path) is None  # room left: some other failure
    with small_tmpfs(tmp_path / "small", size="64k") as small:
        with pytest.raises(OSError) as full:
            (small / "fill").write_bytes(b"\0" * 100_000)
        assert out_of_room(full.value, small / "out") == "no space left on device"
        assert out_of_room(stream_error, small / "out").startswith("no space left on device: ")
        assert out_of_room(ValueError("bad value"), small / "out") is None  # not a write failure at all
