"""Training options from the trainers our users come from (issue 11), each shown to change what it
should on the tiny model."""

from __future__ import annotations

import re

import pytest
import torch

from dreambooth.training.loop import resolved, setup, train, training_step
from dreambooth.training.preflight import preflight
from dreambooth.training.step import _noised
from helpers import lora_weights, max_abs_diff


def _run(cfg):
    cfg = resolved(cfg)
    return setup(cfg, preflight(cfg), progress=False)


def _draw(run, step=0):
    g = torch.Generator().manual_seed(1234 + step)
    return _noised(run, run.data.instance, 0, g, run.cfg.batch_size, 0)


@pytest.fixture
def base_run(make_cfg):
    return _run(make_cfg(batch_size=4))


def test_noise_offset_shifts_the_target_noise_by_a_constant_per_image_and_channel(make_cfg, base_run):
    noisy0, t0, _, target0, _, _ = _draw(base_run)
    run = _run(make_cfg(batch_size=4, noise_offset=0.1))
    noisy, t, _, target, _, _ = _draw(run)
    assert torch.equal(t, t0)
    shift = target - target0  # epsilon prediction: the target is the noise
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0.01 < shift[:, :, 0, 0].abs().mean() < 0.3
    assert not torch.allclose(noisy, noisy0)  # and the input is made from that noise


def test_input_perturbation_changes_the_input_not_the_target(make_cfg, base_run):
    noisy0, t0, _, target0, _, _ = _draw(base_run)
    noisy, t, _, target, _, _ = _draw(_run(make_cfg(batch_size=4, input_perturbation=0.1)))
    assert torch.equal(target, target0) and torch.equal(t, t0)
    assert (noisy - noisy0).abs().max() > 1e-3


def test_snr_gamma_weights_the_loss_by_timestep(make_cfg, base_run):
    plain = training_step(base_run, 0, 0)
    run = _run(make_cfg(batch_size=4, snr_gamma=1e9))  # min(SNR, 1e9) / SNR = 1: no weighting at all
    assert all(a.item() == b.item() for a, b in zip(plain, training_step(run, 0, 0)))
    # SNR runs from 0.005 (t = 999) to 1000 here: with gamma 1e-3 every example counts less, the
    # clean end (high SNR) the least
    run = _run(make_cfg(batch_size=4, snr_gamma=1e-3))
    weighted = training_step(run, 0, 0)
    assert weighted[0].item() < 0.3 * plain[0].item()


def test_options_train_end_to_end_and_change_the_weights(make_cfg, tmp_path):
    common = dict(batch_size=2, max_steps=3)  # (batch 1: a loss weight is one scale, which Adam undoes)
    base = lora_weights(train(make_cfg(output_dir=str(tmp_path / "a"), **common), progress=False))
    for i, kw in enumerate([dict(snr_gamma=1e-3), dict(noise_offset=0.1), dict(input_perturbation=0.1)]):
        out = train(make_cfg(output_dir=str(tmp_path / f"b{i}"), **common, **kw), progress=False)
        assert max_abs_diff(lora_weights(out), base) > 1e-6, kw


def test_ema_weights_are_the_warmed_up_average_of_each_step_and_resume_exactly(make_cfg, tmp_path):
    from safetensors.torch import load_file

    from dreambooth.cli import main

    cfg = dict(max_steps=4, checkpoint_every=1, ema_decay=0.5, batch_size=2)
    out = train(make_cfg(output_dir=str(tmp_path / "run"), **cfg), progress=False)
    raw = [lora_weights(out / "checkpoints" / f"step-{k}") for k in range(1, 5)]
    expected = dict(raw[0])  # diffusers' EMAModel: decay 0 at the first step, then min((1+s)/(10+s), D)
    for k, w in enumerate(raw[1:], start=1):
        d = min((1 + k) / (10 + k), 0.5)
        expected = {n: d * expected[n] + (1 - d) * w[n] for n in w}
    ema = lora_weights(out / "ema")
    assert max_abs_diff(ema, expected) < 1e-6 and max_abs_diff(ema, raw[-1]) > 1e-5
    assert max_abs_diff(lora_weights(out), raw[-1]) == 0  # the raw weights are untouched by saving the EMA
    assert load_file(out / "checkpoints" / "step-2" / "ema" / "pytorch_lora_weights.safetensors").keys() == ema.keys()
    # resumed from step 2, the EMA continues from its saved state
    half = make_cfg(output_dir=str(tmp_path / "half"), **{**cfg, "max_steps": 2})
    train(half, progress=False)
    resumed = train(make_cfg(output_dir=str(tmp_path / "half"), resume="latest", **cfg), progress=False)
    assert max_abs_diff(lora_weights(resumed / "ema"), ema) < 1e-6
    gen = tmp_path / "gen"
    args = ["generate", "--model", make_cfg().model, "--lora", str(out / "ema"), "--prompt", "a photo of sks dog"]
    assert main([*args, "--steps", "2", "--num-images", "1", "--output-dir", str(gen)]) == 0
    assert len(list(gen.glob("*.png"))) == 1


@pytest.mark.smoke
def test_dora_trains_magnitudes_generates_and_exports_dora_scale(make_cfg, tmp_path):
    from safetensors.torch import load_file

    from dreambooth.cli import main

    cfg = make_cfg(use_dora=True, train_text_encoder=True, lora_targets="attn,conv", save_format="both", max_steps=3)
    out = train(cfg, progress=False)
    diffusers_file = load_file(out / "pytorch_lora_weights.safetensors")
    magnitudes = {k: v for k, v in diffusers_file.items() if "lora_magnitude_vector" in k}
    assert any(k.startswith("unet.") for k in magnitudes) and any(k.startswith("text_encoder.") for k in magnitudes)
    # issue 18.4: stock diffusers loads every magnitude of the diffusers file, the text encoder's too
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(cfg.model)
    pipe.load_lora_weights(str(out))
    for comp in ("unet", "text_encoder"):
        loaded = {
            re.sub(r"\.default(_\d+)?|\.weight$|^text_model\.", "", n): p
            for n, p in getattr(pipe, comp).named_parameters()
            if "lora_magnitude_vector" in n
        }
        mine = {
            re.sub(r"\.weight$|^text_model\.", "", k.split(".", 1)[1]): v
            for k, v in magnitudes.items()
            if k.startswith(comp + ".")
        }
        assert set(loaded) == set(mine), comp
        assert all(torch.equal(loaded[k].detach(), mine[k]) for k in mine), comp
    (kohya,) = [p for p in out.glob("*.safetensors") if p.name != "pytorch_lora_weights.safetensors"]
    scales = {k: v for k, v in load_file(kohya).items() if k.endswith(".dora_scale")}
    assert len(scales) == len(magnitudes)
    conv = [v for k, v in scales.items() if "conv" in k and "lora_unet" in k]
    linear = [v for k, v in scales.items() if "to_q" in k]
    assert conv and all(v.dim() == 4 and v.shape[1:] == (1, 1, 1) for v in conv)  # one per output channel
    assert linear and all(v.dim() == 2 and v.shape[1] == 1 for v in linear)
    # (that each merges to peft's weights in ComfyUI and LyCORIS: test_export.py)
    base = ["generate", "--model", cfg.model, "--prompt", "a photo of sks dog", "--steps", "2", "--num-images", "1"]
    assert main([*base, "--lora", str(out), "--output-dir", str(tmp_path / "g")]) == 0
    # stock diffusers drops dora_scale from kohya files: refused, not silently half-loaded
    assert main([*base, "--lora", str(kohya), "--output-dir", str(tmp_path / "g2")]) == 2
    assert not (tmp_path / "g2").exists()
    with pytest.raises(Exception, match="kohya alone cannot hold a DoRA run"):
        make_cfg(use_dora=True, save_format="kohya").validate()
