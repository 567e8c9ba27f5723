"""`dreambooth lora resize` and `lora merge` (issue 21): checked on the weights stock diffusers fuses
from the written files (load_lora_weights, fuse_lora), against the products of the LoRAs they came from."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from dreambooth.cli import main
from helpers import max_abs_diff


def fused(model, lora=None) -> dict:
    """The UNet's and text encoder's weights with the LoRA fused in by stock diffusers."""
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # keeps the fused weights
    return {**{f"unet.{k}": v for k, v in pipe.unet.state_dict().items()},
            **{f"te.{k}": v for k, v in pipe.text_encoder.state_dict().items()}}  # fmt: skip


def test_resize_to_the_loras_rank_is_exact_and_lower_keeps_the_best_approximation(
    tiny_model, lora_with_te, tmp_path, capsys
):
    from dreambooth.loratools import delta, read

    base, original = fused(tiny_model), fused(tiny_model, lora_with_te)
    full = tmp_path / "r4.safetensors"
    assert main(["lora", "resize", str(lora_with_te), str(full), "--rank", "4"]) == 0
    assert max_abs_diff(fused(tiny_model, full), original) <= 1e-5  # rank 4 -> 4: the same products
    printed = capsys.readouterr().out
    assert "100.00 %" in printed and "rank 4 -> 4" in printed
    low = tmp_path / "r2.safetensors"
    assert main(["lora", "resize", str(lora_with_te), str(low), "--rank", "2"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "%  " in x]
    shares = {x.split("%  ")[1]: float(x.split("%")[0]) / 100 for x in lines}
    before, _, _, _ = read(str(lora_with_te), "LORA")
    after, _, _, _ = read(str(low), "LORA")
    assert {d.shape[0] for d, _, _ in after.values()} == {2}
    for name, (d, u, s) in before.items():  # Eckart-Young: what is lost is the smallest singular values
        dw, approx = delta(d, u, s), delta(*after[name])
        sv = torch.linalg.svdvals(dw)
        assert torch.allclose((dw - approx).norm(), sv[2:].norm(), atol=1e-5)
        assert abs(approx.norm() / dw.norm() - shares[name]) < 1e-4
    resized = fused(tiny_model, low)  # and stock diffusers applies it
    assert 0 < max_abs_diff(resized, original) < max_abs_diff(base, original)


def test_merge_adds_the_weighted_products_exactly_and_refuses_another_base(
    tiny_model, lora_with_te, lora_unet_only, tmp_path, capsys
):
    base = fused(tiny_model)
    a, b = fused(tiny_model, lora_with_te), fused(tiny_model, lora_unet_only)
    out = tmp_path / "merged.safetensors"
    assert main(["lora", "merge", str(lora_with_te), str(lora_unet_only), "--weights", "0.7,0.3", str(out)]) == 0
    merged = fused(tiny_model, out)
    expected = {k: base[k] + 0.7 * (a[k] - base[k]) + 0.3 * (b[k] - base[k]) for k in base}
    assert max_abs_diff(merged, expected) <= 1e-5 and max_abs_diff(merged, base) > 1e-3
    small = tmp_path / "merged-r2.safetensors"
    assert main(["lora", "merge", str(lora_with_te), str(lora_unet_only), "--rank", "2", str(small)]) == 0

    other = tmp_path / "sd2"
    assert main(["tiny-model", str(other), "--arch", "sd2"]) == 0
    from dreambooth.demo import example_subject

    run = tmp_path / "sd2-run"
    assert main(["train", "--model", str(other), "--instance-dir", str(example_subject()), "--instance-prompt",
                 "a photo of sks dog", "--output-dir", str(run), "--resolution", "64", "--rank", "4",
                 "--max-steps", "1", "--lr-scheduler", "constant"]) == 0  # fmt: skip
    capsys.readouterr()
    bad = tmp_path / "bad.safetensors"
    for args, named in (([str(lora_with_te), str(run), str(bad)], "do not merge"),
                        ([str(lora_with_te), str(lora_unet_only), "--weights", "1", str(bad)], "--weights")):  # fmt: skip
        assert main(["lora", "merge", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
        assert not bad.exists()


def test_bake_writes_the_model_with_the_lora_fused_as_a_folder_and_as_one_file(tiny_model, lora_with_te, tmp_path):
    """The folder loads in stock diffusers with the fused weights; the single file generates what the
    folder generates."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "baked"
    assert main(["lora", "bake", "--model", str(tiny_model), "--lora", str(lora_with_te), str(folder)]) == 0
    assert max_abs_diff(fused(folder), fused(tiny_model, lora_with_te)) <= 1e-6
    half = tmp_path / "half"
    assert main(["lora", "bake", "--model", str(tiny_model), "--lora", str(lora_with_te), "--scale", "0.5",
                 str(half)]) == 0  # fmt: skip
    base, full, halved = fused(tiny_model), fused(folder), fused(half)
    assert max_abs_diff({k: 2 * halved[k] - base[k] for k in base}, full) <= 1e-5  # linear in the scale
    single = tmp_path / "baked.safetensors"
    assert main(["lora", "bake", "--model", str(tiny_model), "--lora", str(lora_with_te), "--dtype", "fp32",
                 str(single)]) == 0  # fmt: skip
    images = []
    for name, model in (("folder", [str(folder)]), ("file", [str(single), "--model-config", str(tiny_model)])):
        assert main(["generate", "--model", *model, "--prompt", "a photo of sks dog", "--steps", "2",
                     "--num-images", "1", "--output-dir", str(tmp_path / name)]) == 0  # fmt: skip
        images.append(np.asarray(Image.open(next((tmp_path / name).glob("*.png"))), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1


def test_extract_from_a_model_with_a_lora_fused_recovers_the_loras_products(tiny_model, lora_with_te, tmp_path):
    """From base + the LoRA merged in (a 'full fine-tune' whose change has rank 4), extracting rank 4
    gives back each layer's product, and stock diffusers fuses it to the same weights."""
    from dreambooth.loratools import delta, read

    tuned = tmp_path / "tuned"
    assert main(["lora", "bake", "--model", str(tiny_model), "--lora", str(lora_with_te), str(tuned)]) == 0
    out = tmp_path / "extracted.safetensors"
    assert main(["lora", "extract", "--base", str(tiny_model), "--tuned", str(tuned), "--rank", "4", str(out)]) == 0
    original, _, _, _ = read(str(lora_with_te), "LORA")
    extracted, _, _, _ = read(str(out), "LORA")
    assert set(extracted) == set(original)  # the layers the LoRA changed, and only those
    for name, module in original.items():
        assert torch.allclose(delta(*extracted[name]), delta(*module), atol=1e-5), name
    assert max_abs_diff(fused(tiny_model, out), fused(tiny_model, lora_with_te)) <= 1e-5
