"""Merge: a LoRA adapter into its base as verified 16-bit weights."""
