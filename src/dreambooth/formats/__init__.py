"""Files other programs read and write: LoRA layouts (kohya's), ..."""
