"""Image decoding: training, evaluation and the server see the same pixels, whatever the file's mode."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from gemma_ocr.data.fonts import latin_font
from gemma_ocr.data.images import open_image, orientation, to_rgb
from gemma_ocr.evaluation.client import encode_image


def _text_mask(size: tuple[int, int] = (160, 40)) -> np.ndarray:
    """Where a rendered word's ink is (True), drawn with a real font."""
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).text((6, 4), "Invoice 42", fill=255, font=ImageFont.truetype(str(latin_font()), 26))
    mask = np.asarray(canvas) > 128
    assert 0.02 < mask.mean() < 0.5
    return mask


def _transparent_line(mode: str) -> Image.Image:
    """Black text on a fully transparent background, as exported by many annotation and design tools."""
    mask = _text_mask()
    rgba = np.zeros((*mask.shape, 4), np.uint8)  # transparent black background
    rgba[mask, 3] = 255  # opaque black ink
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        return image.convert("LA")
    if mode == "P":  # a palette image whose background entry (black) is marked transparent, through a PNG file
        palette = Image.fromarray(np.where(mask, 0, 1).astype(np.uint8), "P")
        palette.putpalette([0, 0, 0] * 2)
        buf = io.BytesIO()
        palette.save(buf, format="PNG", transparency=1)
        return Image.open(buf)
    return image


def _sixteen_bit_scan(ink: int = 4000, paper: int = 52000) -> Image.Image:
    mask = _text_mask()
    return Image.fromarray(np.where(mask, ink, paper).astype(np.uint16))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_backgrounds_become_white_not_black(mode):
    image = _transparent_line(mode)
    assert image.mode == mode
    plain = np.asarray(image.convert("RGB"))
    assert plain.max() < 10  # a plain conversion loses the text: all black
    ours = np.asarray(to_rgb(image))
    mask = _text_mask()
    assert ours[~mask].min() == 255 and ours[mask].max() < 10  # white paper, black ink


def _transformers_rgb(image: Image.Image) -> np.ndarray:
    """transformers' own RGB conversion, as its image processors apply it (the signature moved within 5.x)."""
    import inspect

    from transformers.image_transforms import convert_to_rgb

    numpy_kwarg = {"return_numpy": True} if "return_numpy" in inspect.signature(convert_to_rgb).parameters else {}
    return np.asarray(convert_to_rgb(image, **numpy_kwarg))


@pytest.mark.parametrize("make", [lambda: Image.fromarray(_text_mask()), lambda: Image.fromarray(_text_mask()).convert("L"),
                                  lambda: Image.new("RGB", (20, 10), (10, 200, 30))])
def test_opaque_images_get_the_pixels_of_transformers_image_processors(make):
    image = make()
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), _transformers_rgb(image))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_images_get_the_pixels_of_transformers_image_processors(mode):
    """Releases that composite transparency (as vLLM does) must agree pixel for pixel; older ones made it black."""
    if _transformers_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0))).min() != 255:
        pytest.skip("this transformers release converts transparency straight to RGB (black); the evaluator flattens first")
    image = _transparent_line(mode)
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), _transformers_rgb(image))


@pytest.mark.parametrize("ink, paper", [(4000, 52000), (300, 3900)])  # 16-bit range, and 12-bit data in 16 bits
def test_sixteen_bit_scans_keep_their_text(tmp_path, ink, paper):
    path = tmp_path / "scan.tif"
    _sixteen_bit_scan(ink, paper).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16")
        assert (np.asarray(raw.convert("RGB")) == 255).mean() > 0.95  # a plain conversion: a white page
    rgb = np.asarray(open_image(str(path)))
    mask = _text_mask()
    assert rgb.shape == (*mask.shape, 3)
    assert rgb[mask].max() == 0 and rgb[~mask].min() == 255


def test_a_blank_sixteen_bit_page_stays_blank():
    assert np.asarray(to_rgb(Image.fromarray(np.full((8, 8), 1234, np.uint16)))).min() == 255


def _decoded(data_url: str) -> tuple[str, Image.Image]:
    header, payload = data_url.split(",", 1)
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return header, image


def test_evaluation_sends_the_pixels_training_sees(tmp_path):
    rgb_png = tmp_path / "rgb.png"
    Image.fromarray(_text_mask()).convert("RGB").save(rgb_png)
    assert encode_image(str(rgb_png)) == "data:image/png;base64," + base64.b64encode(rgb_png.read_bytes()).decode()

    trns = Image.fromarray(np.where(_text_mask()[..., None], 0, np.array([255, 0, 0], np.uint8)).astype(np.uint8))
    for name, image, save in (("scan16.png", _sixteen_bit_scan(), {}), ("alpha.png", _transparent_line("RGBA"), {}),
                              ("trns.png", trns, {"transparency": (255, 0, 0)}),  # an RGB PNG whose red is transparent
                              ("bilevel.tif", Image.fromarray(~_text_mask()), {})):
        path = tmp_path / name
        image.save(path, **save)
        header, sent = _decoded(encode_image(str(path)))
        assert header == "data:image/png;base64" and sent.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(sent), np.asarray(open_image(str(path))), err_msg=name)
    trained, mask = np.asarray(open_image(str(tmp_path / "trns.png"))), _text_mask()
    assert trained[~mask].min() == 255 and trained[mask].max() == 0  # the transparent red paper trains as white


def _sideways_photo(path, tag: int = 6) -> np.ndarray:
    """A JPEG stored sideways with an EXIF orientation tag, as phone cameras write them; returns what a viewer shows."""
    from PIL import ImageOps

    upright = Image.fromarray(~_text_mask()).convert("RGB")  # black text on white, wider than tall
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # tag 6 = rotate 90 degrees clockwise to display
    exif = stored.getexif()
    exif[0x0112] = tag
    stored.save(path, format="JPEG", quality=95, exif=exif)
    with Image.open(path) as im:
        assert orientation(im) == tag
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def test_exif_rotated_photos_are_read_upright_as_transformers_loads_them(tmp_path):
    from transformers.image_utils import load_image

    path = tmp_path / "receipt.jpg"
    shown = _sideways_photo(path)
    ours = np.asarray(open_image(str(path)))
    assert ours.shape == shown.shape == (*_text_mask().shape, 3)  # upright: wider than tall, as a viewer shows it
    np.testing.assert_array_equal(ours, shown)
    np.testing.assert_array_equal(ours, np.asarray(load_image(str(path))))  # transformers' serving loader

    header, sent = _decoded(encode_image(str(path)))  # sent upright, whatever the server does with EXIF
    assert header == "data:image/png;base64" and orientation(sent) == 1
    np.testing.assert_array_equal(np.asarray(sent), ours)

    plain = tmp_path / "plain.jpg"
    Image.fromarray(~_text_mask()).convert("RGB").save(plain, format="JPEG")
    assert encode_image(str(plain)).startswith("data:image/jpeg;base64,")  # upright JPEGs go as they are
