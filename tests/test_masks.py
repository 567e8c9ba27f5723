"""--masked-loss (issue 21): a mask of the subject beside each photo (photo.mask.png) or in its alpha
channel weighs the photos' loss on the latent grid; check-data shows the masks and refuses bad ones."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.cli import main


@pytest.fixture
def masked_photos(tmp_path):
    """Two of the example photos, the first with a mask file (its left half the subject), the second
    as a PNG whose alpha channel is the mask (its top half)."""
    from dreambooth.demo import example_subject

    folder = tmp_path / "photos"
    folder.mkdir()
    first, second = sorted(p for p in example_subject().iterdir() if p.suffix == ".jpg")[:2]
    shutil.copy(first, folder / "a.jpg")
    w, h = Image.open(first).size
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255
    Image.fromarray(mask).save(folder / "a.mask.png")
    rgba = Image.open(second).convert("RGBA")
    alpha = np.zeros((rgba.height, rgba.width), np.uint8)
    alpha[: rgba.height // 2] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "b.png")
    return folder


def test_check_data_says_which_photos_are_masked_and_refuses_a_bad_mask(masked_photos, capsys):
    assert main(["check-data", str(masked_photos)]) == 0
    out = capsys.readouterr().out
    assert "a.jpg" in out and "masked by a.mask.png" in out and "masked by its alpha channel" in out
    assert "mask      a.mask.png: mask of a.jpg" in out and "2 usable" in out and "2 masked" in out
    Image.new("L", (10, 10), 255).save(masked_photos / "a.mask.png")  # another size than its photo
    assert main(["check-data", str(masked_photos)]) == 2
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("rejected"))
    assert "a.mask.png" in line and "10x10" in line and "a.jpg" in line
    w, h = Image.open(masked_photos / "a.jpg").size
    Image.new("L", (w, h), 0).save(masked_photos / "a.mask.png")  # empty
    assert main(["check-data", str(masked_photos)]) == 2
    assert "a.mask.png: empty" in capsys.readouterr().out


def test_the_mask_weighs_the_photos_loss_on_the_latent_grid_and_flips_with_the_photo(
    make_cfg, masked_photos, class_dir, tmp_path, monkeypatch
):
    """What reaches the loss: each instance example's weights on the latent grid (the edge softened by
    resizing, as the photo is), 1 on the mask and
    --unmasked-weight elsewhere, flipped with a flipped photo; class examples are not weighed."""
    import dreambooth.training.step as step
    from dreambooth.training.loop import train

    seen = []
    real = step.prior_preservation_loss

    def spy(pred, target, n_instance, prior_weight, weights=None, instance_pixels=None):
        seen.append((n_instance, pred.shape, instance_pixels))
        return real(pred, target, n_instance, prior_weight, weights, instance_pixels)

    monkeypatch.setattr(step, "prior_preservation_loss", spy)
    cfg = make_cfg(instance_dir=str(masked_photos), masked_loss=True, unmasked_weight=0.25, max_steps=6,
                   random_flip=True, class_prompt="a photo of a dog", class_dir=str(class_dir), num_class_images=4)  # fmt: skip
    train(cfg, progress=False)
    maps = [m[0, 0] for n, shape, m in seen]
    assert all(n == 1 and shape[0] == 2 for n, shape, _ in seen)  # one photo and one class image per step
    assert all(m.shape == (8, 8) for m in maps)  # 64 px on the tiny VAE's latent grid
    left = torch.tensor([[1.0] * 4 + [0.25] * 4] * 8)  # a.jpg's mask, and flipped
    top = torch.tensor([[1.0] * 8] * 4 + [[0.25] * 8] * 4)  # b.png's alpha (flipping keeps it)
    kinds = [next((name for name, ref in refs if torch.allclose(m, ref, atol=0.02)), None) for m in maps
             for refs in [[("left", left), ("right", left.flip(-1)), ("top", top)]]]  # fmt: skip
    assert None not in kinds and {"top"} < set(kinds) and {"left", "right"} & set(kinds), kinds


@pytest.mark.parametrize("case", ["no masks", "not an image", "unmasked weight alone"])
def test_masked_loss_refuses_in_one_line(tiny_model, masked_photos, tmp_path, capsys, case):
    from dreambooth.demo import example_subject

    photos, extra, named = masked_photos, ["--masked-loss"], "--masked-loss"
    if case == "no masks":
        photos = example_subject()
    elif case == "not an image":
        (masked_photos / "a.mask.png").write_text("not an image")
        named = "a.mask.png: not an image"
    else:
        extra, named = ["--unmasked-weight", "0.5"], "--unmasked-weight"
    args = ["train", "--model", str(tiny_model), "--instance-dir", str(photos), "--instance-prompt",
            "a photo of sks dog", "--output-dir", str(tmp_path / "run"), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not (tmp_path / "run").exists()
