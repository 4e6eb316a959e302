"""Model loading, LoRA target selection, the tiny Gemma 3 factory and the shipped tiny reader."""
