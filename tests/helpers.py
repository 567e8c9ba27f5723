"""Small helpers the tests share."""

from pathlib import Path


def lora_weights(output_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(output_dir) / "pytorch_lora_weights.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def dog_class_images(model, folder, indices) -> None:
    """Class images of "a photo of a dog" from the tiny model, as training makes them (2 steps, batch 4)."""
    from dreambooth.data.prior import generate_class_images
    from dreambooth.models import load_pipeline

    generate_class_images(
        load_pipeline(str(model)),
        "a photo of a dog",
        folder,
        list(indices),
        seed=0,
        steps=2,
        guidance=7.5,
        batch_size=4,
        resolution=64,
        progress=False,
    )
