"""OCR data: the record format, splitting, synthetic text-line images and statistics."""

from gemma_ocr.data.records import OcrRecord, load_raw_records, load_records, write_records

__all__ = ["OcrRecord", "load_raw_records", "load_records", "write_records"]
