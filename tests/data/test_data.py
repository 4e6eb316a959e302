"""The OCR record format, splitting and the synthetic generator."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from gemma_ocr.data import fonts, synthetic
from gemma_ocr.data.images import check_images
from gemma_ocr.data.records import load_raw_records, load_records, write_records
from gemma_ocr.data.split import parse_ratio, parse_split_spec, split_non_test
from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset
from gemma_ocr.errors import GemmaOcrError
from tests.helpers.system_packages import missing_package


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_relative_image_paths_resolve_against_the_json_folder(tmp_path):
    (tmp_path / "sub" / "img").mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(tmp_path / "sub" / "img" / "a.png")
    f = _write(tmp_path / "sub" / "ocr.json", [{"img_path": "img/a.png", "ocr_results": "abc"}])
    (r,) = load_raw_records(f)
    assert Path(r.image_path) == (tmp_path / "sub" / "img" / "a.png").resolve()
    # Written elsewhere, the path is rewritten relative to the new file and still resolves.
    out = write_records([r], tmp_path / "other" / "deeper" / "x.json")
    assert json.loads(out.read_text())[0]["image_path"] == "../../sub/img/a.png"
    assert load_records(out)[0] == r
    check_images(load_records(out))


def test_load_records_accepts_raw_layout_too(tmp_path):
    f = _write(tmp_path / "raw.json", [{"img_path": "/abs/a.png", "ocr_results": "x"}])
    assert load_records(f)[0].text == "x"


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[{", "malformed JSON at line 1"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"img_path": "a.png"}]', "record 0 lacks field 'ocr_results'"),
        ('[1]', "record 0 is int"),
        ('[{"img_path": "", "ocr_results": "x"}]', "'img_path' must be a non-empty path"),
        ('[{"img_path": "a.png", "ocr_results": 5}]', "'ocr_results' must be a string"),
    ],
)
def test_bad_raw_files_name_file_and_record(tmp_path, content, fragment):
    f = tmp_path / "ocr.json"
    f.write_text(content)
    with pytest.raises(GemmaOcrError) as e:
        load_raw_records(f)
    assert fragment in str(e.value) and str(f) in str(e.value)
    assert "\n" not in str(e.value)


def test_a_byte_order_mark_is_read_past(tmp_path):
    f = tmp_path / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"image_path": "a.png", "ocr_text": "x"}]).encode())
    assert [r.text for r in load_records(f)] == ["x"]


def test_missing_file(tmp_path):
    with pytest.raises(GemmaOcrError, match="not found"):
        load_records(tmp_path / "nope.json")


def test_missing_and_corrupt_images_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    f = _write(tmp_path / "d.json", [{"image_path": "bad.png", "ocr_text": "x"}])
    with pytest.raises(GemmaOcrError, match="cannot be read.*bad.png"):
        check_images(load_records(f), f)
    f = _write(tmp_path / "d.json", [{"image_path": "missing.png", "ocr_text": "x"}])
    with pytest.raises(GemmaOcrError, match="record 0: image not found"):
        check_images(load_records(f), f)


def test_check_images_decodes_everything_and_counts_the_bad_ones(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((300, 200), 60).convert("RGB").save(buf, format="JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # opens and verifies, but is half a JPEG
    (tmp_path / "ok.jpg").write_bytes(buf.getvalue())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    f = _write(tmp_path / "d.json", [{"image_path": "ok.jpg", "ocr_text": "x"}, {"image_path": "cut.jpg", "ocr_text": "x"}])
    with pytest.raises(GemmaOcrError, match=r"record 1: image cannot be read: .*cut.jpg \(image file is truncated"):
        check_images(load_records(f), f)
    items = [{"image_path": n, "ocr_text": "x"} for n in ("ok.jpg", "cut.jpg", "bad.png", "gone.png", "gone2.png", "ok.jpg")]
    f = _write(tmp_path / "d.json", items)
    with pytest.raises(GemmaOcrError) as e:
        check_images(load_records(f), f)
    message = str(e.value)
    assert message.startswith(f"{f}: 4 of 6 images cannot be used: record 1: ") and "\n" not in message
    assert "record 2: image cannot be read" in message and "record 3: image not found" in message
    assert message.endswith("; and 1 more")


def test_split_is_reproducible_and_has_the_ratio():
    items = list(range(600))
    a, b = split_non_test(items), split_non_test(items)
    assert a == b
    assert len(a.non_test) == 100 and len(a.test) == 500
    assert sorted(a.non_test + a.test) == items
    assert a.non_test != items[:100]  # shuffled
    assert split_non_test(items, seed=1).non_test != a.non_test
    assert len(split_non_test(items, 0.5).non_test) == 300


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_split_ratio_out_of_range(bad):
    with pytest.raises(GemmaOcrError, match="between 0 and 1"):
        split_non_test([1, 2, 3], bad)


def test_parse_ratio_forms():
    assert parse_ratio("1/6") == pytest.approx(1 / 6)
    assert parse_ratio("1:5") == pytest.approx(1 / 6)
    assert parse_ratio("0.25") == 0.25
    with pytest.raises(ValueError, match="1/6 or 1:5"):
        parse_ratio("a third")


def test_parse_split_spec():
    assert parse_split_spec("train", 50) == slice(0, 50)
    assert parse_split_spec("train[:90%]", 50) == slice(0, 45)
    assert parse_split_spec("train[90%:]", 50) == slice(45, 50)
    assert parse_split_spec("train[10:20]", 50) == slice(10, 20)
    with pytest.raises(GemmaOcrError, match="one split, named train"):
        parse_split_spec("validation[:10%]", 50)
    with pytest.raises(GemmaOcrError, match="train\\[:90%\\]"):
        parse_split_spec("train[::]]", 50)


def test_generator_is_deterministic_and_images_open(tmp_path):
    cfg = SyntheticConfig(n_samples=12, seed=3, blur=1.0, noise=10, rotation=3)
    a = generate_dataset(tmp_path / "a", cfg)
    b = generate_dataset(tmp_path / "b", cfg)
    assert [r.text for r in a] == [r.text for r in b]
    for ra, rb in zip(a, b):
        assert Path(ra.image_path).read_bytes() == Path(rb.image_path).read_bytes()
        with Image.open(ra.image_path) as im:
            assert im.mode == "RGB" and im.width > im.height > 8
    assert [r.text for r in generate_dataset(tmp_path / "c", SyntheticConfig(n_samples=12, seed=4))] != [r.text for r in a]
    raw = load_raw_records(tmp_path / "a" / "ocr.json")
    assert [r.text for r in raw] == [r.text for r in a]


@pytest.fixture(scope="module")
def cjk_font_path() -> Path:
    """A system CJK font (Debian's small fonts-wqy-microhei: .ci/run installs it)."""

    def found() -> bool:
        fonts.cjk_font.cache_clear()
        return fonts.cjk_font() is not None

    why = missing_package("fonts-wqy-microhei", found)
    if why:
        pytest.skip(why)
    return fonts.cjk_font()


def test_generator_renders_chinese_lines_as_distinct_glyphs(tmp_path, cjk_font_path):
    import numpy as np
    from PIL import ImageFont

    recs = generate_dataset(tmp_path, SyntheticConfig(n_samples=20, seed=0, scripts=("cjk",)))
    assert all(any("\u4e00" <= c <= "\u9fff" for c in r.text) for r in recs)
    assert fonts.missing_glyphs(cjk_font_path, "".join(synthetic.CJK_PHRASES) + "：0123456789") == ""
    font = ImageFont.truetype(str(cjk_font_path), 32)
    glyphs = {bytes(font.getmask(ch)) for ch in "請給結果"}
    assert len(glyphs) == 4  # a font without these characters draws one and the same empty box
    with Image.open(recs[0].image_path) as im:
        arr = np.asarray(im.convert("L"))
    assert arr.min() < 100 < arr.max()


def test_a_font_without_the_lines_glyphs_is_one_clear_error(tmp_path, monkeypatch):
    assert fonts.missing_glyphs(fonts.latin_font(), "Total ០១ 12០") == "០១"
    assert fonts.missing_glyphs(fonts.khmer_font(), "០១២") == ""
    monkeypatch.setattr(synthetic, "khmer_font", fonts.latin_font)  # Noto Sans has no Khmer digits
    with pytest.raises(GemmaOcrError, match=r"NotoSans.*has no glyph for '[០-៩]+'.*empty boxes") as err:
        generate_dataset(tmp_path, SyntheticConfig(n_samples=3, scripts=("khmer",)))
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "images").glob("*.png"))  # refused before anything is rendered


def test_generator_renders_khmer_digits_with_ink(tmp_path):
    recs = generate_dataset(tmp_path, SyntheticConfig(n_samples=30, seed=0, scripts=("khmer",)))
    assert all(set(r.text) <= set("០១២៣៤៥៦៧៨៩") for r in recs)
    import numpy as np

    with Image.open(recs[0].image_path) as im:
        arr = np.asarray(im.convert("L"))
    assert arr.min() < 100 < arr.max()  # dark glyphs on a light background


def test_digit_lines_and_another_font(tmp_path):
    """The reader's pretraining lines (digits, Noto Sans) and the main job's shift (the same lines in Noto Serif)."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from gemma_ocr.data.synthetic import READER_PRETRAINING, SHIFTED_DIGITS, generate_dataset, iter_lines

    lines = [text for _, text in iter_lines(dataclasses.replace(READER_PRETRAINING, n_samples=200))]
    assert all(text.isdigit() and 4 <= len(text) <= 10 for text in lines)
    assert {len(t) for t in lines} == set(range(4, 11))
    sans = generate_dataset(tmp_path / "sans", dataclasses.replace(READER_PRETRAINING, n_samples=3, seed=5))
    serif = generate_dataset(tmp_path / "serif", dataclasses.replace(SHIFTED_DIGITS, n_samples=3, seed=5))
    assert [r.text for r in sans] == [r.text for r in serif]  # the same lines, drawn in another font
    for a, b in zip(sans, serif):
        pa, pb = np.asarray(Image.open(a.image_path)), np.asarray(Image.open(b.image_path))
        assert pa.shape != pb.shape or not np.array_equal(pa, pb)


def test_unknown_script_and_bad_digit_lengths_are_one_line():
    from gemma_ocr.data.synthetic import SyntheticConfig, iter_lines

    with pytest.raises(GemmaOcrError, match="unknown script 'greek'"):
        list(iter_lines(SyntheticConfig(scripts=("greek",))))
    with pytest.raises(GemmaOcrError, match="digits_length"):
        list(iter_lines(SyntheticConfig(scripts=("digits",), digits_length=(5, 2))))
