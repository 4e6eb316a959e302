"""LoRA supervised fine-tuning of Gemma 3 for OCR: data, collator, tracking, the speed and memory switches and ``tune()``."""
