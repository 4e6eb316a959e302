"""The reader of ``.parquet`` labels files, as Hugging Face ``datasets`` write them.

An ``Image`` feature holds each image's bytes, which are saved as files under ``images_dir`` (named by row and the
original file's name), or its path; the text column holds strings. Rows are read in batches of
:data:`PARQUET_BATCH_ROWS`. Reading Parquet needs pyarrow.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from gemma_ocr.data.labels_files import IMAGE_KEYS, TEXT_KEYS, clean_text, pick_key
from gemma_ocr.data.records import OcrRecord, resolve_image_path
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import reporting_write_errors

PARQUET_BATCH_ROWS = 256
IMAGE_FORMAT_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}


def parquet_records(path: Path, image_key: str | None, text_key: str | None, base: Path,
                    images_dir: Path) -> list[OcrRecord]:
    """Records of a Parquet file, read in batches; embedded image bytes are written to ``images_dir``."""
    try:
        # pyarrow: optional, only .parquet files need it
        import pyarrow as pa
        import pyarrow.parquet as pq  # optional as well
    except ImportError:
        raise GemmaOcrError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise GemmaOcrError(f"{path}: not a readable Parquet file ({e})") from None
    schema = table.schema_arrow
    image_columns = _image_columns(schema)
    image_col = image_columns[0] if image_key is None and len(image_columns) == 1 else \
        pick_key(schema.names, image_key, IMAGE_KEYS, "image", path)
    text_col = pick_key(schema.names, text_key, TEXT_KEYS, "text", path)
    if not (pa.types.is_string(schema.field(text_col).type) or pa.types.is_large_string(schema.field(text_col).type)):
        raise GemmaOcrError(f"{path}: text column {text_col!r} holds {schema.field(text_col).type}, not strings "
                            f"(pass --text-key with the column of transcriptions)")
    total = table.metadata.num_rows
    if total == 0:
        raise GemmaOcrError(f"{path}: no rows (the Parquet file is empty)")
    records: list[OcrRecord] = []
    with tqdm(total=total, desc=f"importing {path.name}", unit="row", disable=total < 2000, leave=False) as bar:
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[image_col, text_col]):
            for image, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                row = len(records)
                records.append(OcrRecord(_parquet_image(image, row, path, base, images_dir), clean_text(text or "")))
            bar.update(batch.num_rows)
    return records


def _image_columns(schema) -> list[str]:
    """Columns holding images: a ``datasets`` Image feature (a struct of bytes and path) or raw bytes."""
    import pyarrow as pa  # optional: only .parquet files need it (parquet_records says how to install it)

    def is_image(t) -> bool:
        return (pa.types.is_struct(t) and {"bytes", "path"} <= {t.field(i).name for i in range(t.num_fields)}) \
            or pa.types.is_binary(t) or pa.types.is_large_binary(t)

    return [n for n in schema.names if is_image(schema.field(n).type)]


def _parquet_image(value: object, row: int, path: Path, base: Path, images_dir: Path) -> str:
    """The image file of one Parquet row: its embedded bytes saved under ``images_dir``, or its path resolved."""
    data, name = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    if isinstance(data, (bytes, bytearray)) and data:
        return str(_save_image_bytes(bytes(data), row, name, path, images_dir))
    if isinstance(data, str):
        name = data
    if isinstance(name, str) and name.strip():
        return resolve_image_path(name.strip(), base)
    raise GemmaOcrError(f"{path}: row {row} has no image (neither bytes nor a path; every row needs one)")


def _save_image_bytes(data: bytes, row: int, name: str | None, path: Path, images_dir: Path) -> Path:
    """Write one embedded image as ``<row>[_<original stem>].<format>`` (the bytes as they are)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except (UnidentifiedImageError, OSError) as e:
        raise GemmaOcrError(f"{path}: row {row}: the image bytes are not a readable image ({e})") from None
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:80] if name else ""
    target = images_dir / (f"{row:06d}" + (f"_{stem}" if stem else "") + IMAGE_FORMAT_SUFFIXES.get(fmt, f".{fmt.lower() or 'img'}"))
    with reporting_write_errors(target, "the import stopped before writing its output file"):
        images_dir.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return target.resolve()
