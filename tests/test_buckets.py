"""Aspect-ratio bucketing (issue 11): photos train in the shape nearest their own, not cropped square."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from dreambooth.data.buckets import bucket_sizes, epoch_batches, nearest_bucket
from dreambooth.data.pixels import crop_box, micro_conditioning
from dreambooth.training.loop import resolved, setup, train, training_step
from dreambooth.training.preflight import preflight


def test_buckets_keep_the_pixel_count_and_the_step():
    buckets = bucket_sizes(512, 64)
    assert (512, 512) in buckets and (384, 640) in buckets and (640, 384) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and 256 <= min(w, h) for w, h in buckets)
    assert nearest_bucket((600, 900), buckets)[0] < nearest_bucket((600, 900), buckets)[1]  # portrait
    assert nearest_bucket((1000, 1000), buckets) == (512, 512)
    # a 3:4 photo in the 448x576 bucket loses a few pixels, not a quarter of its height
    w, h = nearest_bucket((768, 1024), buckets)
    nw, nh, left, top = crop_box(768, 1024, (w, h))
    assert (w, h) == (448, 576) and nh - h <= 24 and nw == w


def test_every_batch_comes_from_one_bucket_and_every_photo_is_used():
    targets = [(64, 64), (48, 80), (64, 64), (48, 80), (80, 48), (64, 64)]
    batches = epoch_batches(targets, 2, seed=0, stream=0, epoch=0)
    assert all(len({targets[i] for i in b}) == 1 and len(b) == 2 for b in batches)
    assert set(sum(batches, [])) == set(range(len(targets)))
    assert batches != epoch_batches(targets, 2, seed=0, stream=0, epoch=1)  # reshuffled each epoch


def test_sdxl_micro_conditioning_names_the_bucket_as_the_target():
    assert micro_conditioning((768, 1024), (448, 576), (0.5, 0.5), False)[4:] == (576, 448)


@pytest.fixture
def mixed_photos(tmp_path, instance_dir) -> Path:
    """The dog photos plus a tall and a wide crop of one of them."""
    d = tmp_path / "mixed"
    shutil.copytree(instance_dir, d)
    im = Image.open(sorted(d.iterdir())[0]).convert("RGB")
    w, h = im.size
    im.crop((0, 0, w // 2, h)).save(d / "tall.png")
    im.crop((0, 0, w, h // 2)).save(d / "wide.png")
    return d


def test_training_with_buckets_caches_each_photo_in_its_shape_and_trains_with_prior(
    make_cfg, mixed_photos, class_dir, tmp_path
):
    classes = tmp_path / "class"
    shutil.copytree(class_dir, classes)
    cfg = resolved(
        make_cfg(
            instance_dir=str(mixed_photos),
            buckets=True,
            batch_size=1,
            class_prompt="a photo of a dog",
            class_dir=str(classes),
            num_class_images=4,
        )
    )
    run = setup(cfg, preflight(cfg), progress=False)
    s = run.data.instance
    names = [p.name for p in s.paths]
    tall, wide = s.targets[names.index("tall.png")], s.targets[names.index("wide.png")]
    assert tall[0] < tall[1] and wide[0] > wide[1]
    f = 2 ** (len(run.comps.vae.config.block_out_channels) - 1)
    assert s._latent_cache[(names.index("tall.png"), False)].shape[1:] == (tall[1] // f, tall[0] // f)
    for step in range(6):
        loss, inst, prior = training_step(run, step, 0)
        assert torch.isfinite(loss) and prior > 0
    out = train(
        make_cfg(instance_dir=str(mixed_photos), buckets=True, output_dir=str(tmp_path / "run")), progress=False
    )
    assert (out / "pytorch_lora_weights.safetensors").is_file()
