"""The toy world and its oracle (issue 6): deterministic scenes, captions, and an oracle that reads
every attribute back with >= 95 % accuracy on the world's own images."""

import random

import numpy as np
import pytest
from PIL import ImageFilter

from dreambooth.toyworld.oracle import attribute_accuracy, read_scene
from dreambooth.toyworld.world import (
    BACKGROUNDS,
    OBJECT_COLORS,
    PATTERNS,
    SHAPES,
    caption,
    render,
    sample_scene,
    samples,
)


def test_the_world_is_deterministic_by_seed():
    a = [(np.asarray(im), cap) for im, cap, _ in samples(20, seed=7)]
    b = [(np.asarray(im), cap) for im, cap, _ in samples(20, seed=7)]
    c = [cap for _, cap, _ in samples(20, seed=8)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert [x[1] for x in a] != c


def test_every_attribute_occurs_and_the_background_never_takes_the_objects_colour():
    scenes = [s for _, _, s in samples(800, seed=0)]
    assert {s.shape for s in scenes} == set(SHAPES) and {s.pattern for s in scenes} == set(PATTERNS)
    assert {s.color for s in scenes} == set(OBJECT_COLORS) and {s.background for s in scenes} == set(BACKGROUNDS)
    assert all(s.background != s.color for s in scenes)
    assert all(0 <= s.x and s.x + s.size <= 64 and 0 <= s.y and s.y + s.size <= 64 for s in scenes)
    with pytest.raises(ValueError):
        sample_scene(random.Random(0), color="green", background="green")


def test_captions_name_the_scene_and_sometimes_drop_words():
    scene = sample_scene(random.Random(0), shape="star", color="red", pattern="striped", background="blue")
    assert caption(scene, full=True) == "a photo of a red striped star on a blue background"
    orange = sample_scene(random.Random(0), shape="heart", color="orange", pattern="plain", background="white")
    assert caption(orange, full=True) == "a photo of an orange heart on a white background"
    rng = random.Random(1)
    caps = {caption(scene, rng) for _ in range(300)}
    assert "a photo of a star" in caps and "a photo of a red striped star on a blue background" in caps


def test_oracle_reads_the_worlds_images_with_at_least_95_percent_accuracy():
    pairs = [(s, read_scene(im)) for im, _, s in samples(500, seed=123)]
    acc = attribute_accuracy(pairs)
    # measured here: every attribute 1.00 on seeds 1-3 (600 images each), all four at once 0.998-1.00
    assert all(acc[k] >= 0.95 for k in ("background", "color", "pattern", "shape", "all")), acc


def test_oracle_survives_a_little_blur_and_sees_an_empty_image():
    pairs = [(s, read_scene(im.filter(ImageFilter.GaussianBlur(0.6)))) for im, _, s in samples(200, seed=5)]
    acc = attribute_accuracy(pairs)
    assert acc["background"] == 1.0 and acc["color"] >= 0.95 and acc["shape"] >= 0.9, acc
    empty = render(sample_scene(random.Random(0), size=1, x=30, y=30, background="gray"))
    assert read_scene(empty)["shape"] == "none"


def test_held_out_triples_never_reach_training_and_evaluation_is_half_held_out():
    from dreambooth.toyworld.data import eval_captions, held_out_triples, training_scenes

    held = held_out_triples()
    caps = eval_captions()
    assert len(caps) == 100 and sum(h for _, _, h in caps) == 50
    assert all((t in held) == h for _, t, h in caps)
    assert not any((s.shape, s.color, s.background) in held for s, _ in training_scenes(2000, seed=0))


def test_pretraining_script_writes_a_pipeline_that_stock_diffusers_loads_and_is_deterministic(tmp_path, monkeypatch):
    import sys

    import torch
    from diffusers import StableDiffusionPipeline

    from dreambooth.toyworld import train
    from dreambooth.toyworld.data import MAX_TOKENS

    def pretrain(out, work):
        argv = ["train", str(out), "--work", str(work), "--vae-steps", "2", "--vae-batch", "2", "--unet-steps", "2"]
        monkeypatch.setattr(
            sys, "argv", [*argv, "--data", "8", "--batch", "2", "--offset-steps", "2", "--decoder-steps", "2"]
        )
        train.main()
        return StableDiffusionPipeline.from_pretrained(out)

    pipe = pretrain(tmp_path / "toy", tmp_path / "work")
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16  # 64x64x3 -> 16x16x4
    assert pipe.tokenizer.tokenize("a photo of sks star") == ["a</w>", "photo</w>", "of</w>", "sks</w>", "star</w>"]
    assert pipe.tokenizer.model_max_length == MAX_TOKENS  # what it was trained with, not CLIP's 77
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the data: latents at unit variance
    assert not list((tmp_path / "work").glob("*.pt"))  # stage checkpoints and latents: safetensors, no pickle
    again = pretrain(tmp_path / "toy2", tmp_path / "work2")  # the same seed: the same weights
    for a, b in ((pipe.unet, again.unet), (pipe.vae, again.vae), (pipe.text_encoder, again.text_encoder)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
