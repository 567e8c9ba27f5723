"""Small helpers the tests share."""

from pathlib import Path


def lora_weights(output_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(output_dir) / "pytorch_lora_weights.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
