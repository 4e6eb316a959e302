"""OCR data: the record format, splitting, synthetic text-line images and statistics."""
