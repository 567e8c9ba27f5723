"""Prior preservation: class images made once and kept, entering every step, weighted by lambda."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from dreambooth.data.prior import generate_class_images, missing_class_indices
from dreambooth.models import load_pipeline
from dreambooth.training.loop import setup, train, training_step
from dreambooth.training.preflight import preflight
from helpers import lora_weights, max_abs_diff


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_generation_continues_and_makes_the_same_images(make_cfg, tiny_model, tmp_path):
    pipe = load_pipeline(str(tiny_model))
    kw = dict(seed=0, steps=2, guidance=7.5, resolution=64, progress=False)
    one_go = tmp_path / "one_go"
    generate_class_images(pipe, "a photo of a dog", one_go, missing_class_indices(one_go, 5), batch_size=5, **kw)
    # An "interrupted" generation: three images made, plus a picture of the user's own that counts too.
    interrupted = tmp_path / "interrupted"
    generate_class_images(pipe, "a photo of a dog", interrupted, [0, 2], batch_size=1, **kw)
    shutil.copy(one_go / "class-00004.png", interrupted / "my-own-dog.png")
    kept = snapshot(interrupted)
    assert missing_class_indices(interrupted, 5) == [1, 3]
    cfg = make_cfg(
        class_prompt="a photo of a dog",
        class_dir=str(interrupted),
        num_class_images=5,
        class_inference_steps=2,
        class_batch_size=2,
        max_steps=1,
    )
    train(cfg, progress=False)
    after = snapshot(interrupted)
    assert {k: after[k] for k in kept} == kept  # nothing already there was replaced
    assert sorted(after) == [
        "class-00000.png",
        "class-00001.png",
        "class-00002.png",
        "class-00003.png",
        "my-own-dog.png",
    ]
    for name in ("class-00001.png", "class-00003.png"):  # the missing ones, as one go would make them
        a = np.asarray(Image.open(interrupted / name), dtype=np.int16)
        b = np.asarray(Image.open(one_go / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 2  # batches of other sizes round differently, by a level at most
        assert not np.array_equal(a, np.asarray(Image.open(one_go / "class-00000.png"), dtype=np.int16))


def first_step_gradients(cfg):
    run = setup(cfg, preflight(cfg), progress=False)
    loss, _, prior = training_step(run, 0, 0)
    loss.backward()
    return {n: p.grad.clone() for n, p in run.comps.denoiser.named_parameters() if p.requires_grad}, float(
        prior.detach()
    )


def test_zero_prior_weight_gives_the_update_of_a_run_without_class_images(make_cfg, class_dir):
    with_class = dict(class_prompt="a photo of a dog", class_dir=str(class_dir), num_class_images=4)
    plain, _ = first_step_gradients(make_cfg())
    zero, prior = first_step_gradients(make_cfg(prior_loss_weight=0.0, **with_class))
    one, _ = first_step_gradients(make_cfg(prior_loss_weight=1.0, **with_class))
    assert prior > 0  # the class images were there...
    scale = max(float(g.abs().max()) for g in plain.values())
    assert max(float((plain[k] - zero[k]).abs().max()) for k in plain) <= 1e-5 * scale  # ...and added nothing
    assert max(float((plain[k] - one[k]).abs().max()) for k in plain) > 1e-2 * scale  # lambda = 1 does


def test_class_loss_enters_every_step_weighted_by_lambda(make_cfg, class_dir, tmp_path):
    out = train(
        make_cfg(
            max_steps=4,
            class_prompt="a photo of a dog",
            class_dir=str(class_dir),
            num_class_images=4,
            prior_loss_weight=0.5,
        ),
        progress=False,
    )
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert len(rows) == 4
    for r in rows:
        inst, prior, loss = float(r["instance_loss"]), float(r["prior_loss"]), float(r["loss"])
        assert prior > 0
        assert loss == pytest.approx(inst + 0.5 * prior, rel=1e-4)
    w1 = lora_weights(out)
    out2 = train(
        make_cfg(
            output_dir=str(tmp_path / "lambda1"),
            max_steps=4,
            class_prompt="a photo of a dog",
            class_dir=str(class_dir),
            num_class_images=4,
            prior_loss_weight=1.0,
        ),
        progress=False,
    )
    assert max_abs_diff(w1, lora_weights(out2)) > 1e-6  # lambda changes what is learned
