"""SDXL (issue 7): the tiny SDXL from `tiny-model --arch sdxl` loads through the same path as real
models; generation passes the micro-conditioning to the UNet; an SDXL LoRA (both text encoders,
alpha != rank) exports to kohya's layout (lora_te1_/lora_te2_, SGM block names) and stock diffusers
gives the same images from both files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.families import FAMILIES


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "model"
    assert main(["tiny-model", str(out), "--arch", "sdxl"]) == 0
    return out


@pytest.fixture(scope="module")
def sdxl_lora(sdxl, tmp_path_factory):
    """Random LoRA adapters (rank 4, alpha 8) on the UNet and both text encoders, written as training does."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    from dreambooth.formats.lora import write_lora_file
    from dreambooth.methods.lora import TEXT_ENCODER_TARGETS

    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl))
    torch.manual_seed(0)
    unet_targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "proj_in"]
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=unet_targets))
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        te.add_adapter(
            LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=list(TEXT_ENCODER_TARGETS))
        )
    with torch.no_grad():
        for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("sdxl_lora") / "pytorch_lora_weights.safetensors"
    te = {"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    return write_lora_file(path, FAMILIES["sdxl"], pipe.unet, te)


def _stock_images(model, lora):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    g = torch.Generator().manual_seed(0)
    return pipe("a photo of sks dog", num_inference_steps=3, generator=g, output_type="np", height=64, width=64).images[
        0
    ]


def test_generate_on_sdxl_passes_the_micro_conditioning(sdxl, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    seen = []
    real = UNet2DConditionModel.forward

    def spy(self, *args, added_cond_kwargs=None, **kw):
        seen.append(added_cond_kwargs)
        return real(self, *args, added_cond_kwargs=added_cond_kwargs, **kw)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--model",
                str(sdxl),
                "--prompt",
                "a photo of a dog",
                "--steps",
                "2",
                "--num-images",
                "1",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    (png,) = out.glob("*.png")
    assert Image.open(png).size == (64, 64)  # the model's native size
    assert seen and all(set(c) == {"text_embeds", "time_ids"} for c in seen)
    assert seen[0]["time_ids"][0].tolist() == [64, 64, 0, 0, 64, 64]  # original size, crop, target size
    assert seen[0]["text_embeds"].shape[-1] == 48  # the second encoder's pooled projection


def test_sdxl_lora_exports_to_kohya_and_loads_to_the_same_images(sdxl, sdxl_lora, tmp_path, capsys):
    kohya = tmp_path / "dog-xl.safetensors"
    assert main(["export", "--lora", str(sdxl_lora), str(kohya)]) == 2  # outside a run: which SGM blocks?
    assert "give --model" in capsys.readouterr().err
    assert main(["export", "--lora", str(sdxl_lora), "--model", str(sdxl), str(kohya)]) == 0
    with safe_open(str(kohya), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert {k.split("_")[1] for k in keys} == {"unet", "te1", "te2"}
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys) and any(
        k.startswith("lora_unet_output_blocks_") for k in keys
    )
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_alpha"] == "8.0"
    ours, theirs = _stock_images(sdxl, sdxl_lora), _stock_images(sdxl, kohya)
    assert np.abs(ours - theirs).max() <= 1e-5
    back = tmp_path / "back.safetensors"  # and back to diffusers' layout: the same tensors
    assert main(["export", "--lora", str(kohya), "--format", "diffusers", "--model", str(sdxl), str(back)]) == 0
    a, b = load_file(str(sdxl_lora)), load_file(str(back))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    images = []
    for name, lora in (("ours", sdxl_lora), ("kohya", kohya)):
        args = ["generate", "--model", str(sdxl), "--lora", str(lora), "--prompt", "a photo of sks dog", "--steps", "3"]
        assert (
            main([*args, "--num-images", "1", "--lora-scale-text-encoder", "0.5", "--output-dir", str(tmp_path / name)])
            == 0
        )
        (png,) = (tmp_path / name).glob("*.png")
        images.append(np.asarray(Image.open(png), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1


def test_lora_training_on_sdxl_conditions_on_sizes_and_trains_both_text_encoders(sdxl, tmp_path, monkeypatch):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from dreambooth.optimizers.adamw import AdamW

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (96, 64), (200, 120, 40)).save(photos / "wide.png")  # 96 wide, 64 high
    seen, lrs = [], []
    real_forward, real_build = UNet2DConditionModel.forward, AdamW.build

    def spy(self, *args, added_cond_kwargs=None, **kw):
        if self.training:
            seen.append(added_cond_kwargs)
        return real_forward(self, *args, added_cond_kwargs=added_cond_kwargs, **kw)

    def spy_build(self, groups):
        lrs.extend(g["lr"] for g in groups)
        return real_build(self, groups)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    monkeypatch.setattr(AdamW, "build", spy_build)
    run = tmp_path / "run"
    args = ["train", "--model", str(sdxl), "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog"]
    args += ["--class-prompt", "a photo of a dog", "--class-dir", str(tmp_path / "class"), "--num-class-images", "2"]
    args += ["--class-inference-steps", "2", "--max-steps", "2", "--rank", "4", "--lr-scheduler", "constant"]
    args += ["--train-text-encoder", "--text-encoder-lr", "1e-3", "--text-encoder-2-lr", "2e-3"]
    assert main([*args, "--learning-rate", "1e-2", "--output-dir", str(run), "--save-format", "both"]) == 0
    assert lrs == [1e-2, 1e-3, 2e-3]  # UNet, text encoder 1, text encoder 2
    assert len(seen) == 2 and all(set(c) == {"text_embeds", "time_ids"} for c in seen)
    instance_ids, class_ids = seen[0]["time_ids"].tolist()  # instance example first, then the class one
    assert instance_ids == [64, 96, 0, 16, 64, 64]  # original 64x96, centre crop 16 px from the left
    assert class_ids == [64, 64, 0, 0, 64, 64]  # class images come at the native size
    weights = load_file(str(run / "pytorch_lora_weights.safetensors"))
    assert {k.split(".")[0] for k in weights} == {"unet", "text_encoder", "text_encoder_2"}
    with safe_open(str(run / "run.safetensors"), "pt") as f:
        assert {k.split("_")[1] for k in f.keys()} == {"unet", "te1", "te2"}
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl))
    pipe.load_lora_weights(str(run))  # stock diffusers takes our SDXL LoRA
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}


def test_textual_inversion_on_sdxl_learns_the_token_in_both_encoders(sdxl, tmp_path):
    """SDXL's TI file is {"clip_l", "clip_g"} (AUTOMATIC1111's and ComfyUI's layout); generate loads both
    parts, and the token then changes the image."""
    from dreambooth.demo import example_subject

    run = tmp_path / "ti"
    args = ["train", "--model", str(sdxl), "--instance-dir", str(example_subject()), "--method", "textual-inversion"]
    args += ["--instance-prompt", "a photo of <d>", "--token", "<d>", "--initializer-token", "dog"]
    args += ["--num-vectors", "2", "--max-steps", "2"]
    assert main([*args, "--learning-rate", "0.5", "--lr-scheduler", "constant", "--output-dir", str(run)]) == 0
    with safe_open(str(run / "learned_embeds.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
        assert f.metadata()["token"] == "<d>"
    assert shapes == {"clip_l": (2, 32), "clip_g": (2, 48)}
    images = []
    for name, extra in (("with", ["--embedding", str(run)]), ("without", [])):
        gen = [
            "generate",
            "--model",
            str(sdxl),
            *extra,
            "--prompt",
            "a photo of <d>",
            "--steps",
            "2",
            "--num-images",
            "1",
        ]
        assert main([*gen, "--output-dir", str(tmp_path / name)]) == 0
        (png,) = (tmp_path / name).glob("*.png")
        images.append(np.asarray(Image.open(png), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() > 0


def test_grid_and_evaluate_take_an_sdxl_model_and_lora(sdxl, sdxl_lora, extractors, tmp_path):
    import json

    g = tmp_path / "grid"
    args = ["grid", "--model", str(sdxl), "--lora", str(sdxl_lora), "--prompt", "a photo of sks dog", "--steps", "2"]
    assert main([*args, "--x", "lora-scale-text-encoder=0,1", "--output-dir", str(g)]) == 0
    assert len(list((g / "cells").glob("*.png"))) == 2
    templates = tmp_path / "prompts.txt"
    templates.write_text("a photo of {identifier} {class}\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 120, 200)).save(photos / f"{i}.png")
    dino, clip = extractors
    ev = ["evaluate", "--model", str(sdxl), "--lora", str(sdxl_lora), "--real", str(photos), "--class-noun", "dog"]
    ev += ["--prompts", str(templates), "--images-per-prompt", "2", "--num-class-images", "2", "--steps", "2"]
    assert main([*ev, "--dino-model", str(dino), "--clip-model", str(clip), "--output-dir", str(tmp_path / "ev")]) == 0
    from test_evaluation import _scores_from_scratch

    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_generated"] == 2 and m["n_class"] == 2
    # the SDXL images, scored against the photos: the mean cosines recomputed apart from the files (to 1e-6)
    total, per = _scores_from_scratch(extractors, photos, tmp_path / "ev", "sks")
    assert list(per) == ["a photo of sks dog"] and per["a photo of sks dog"]["images"] == 2
    assert {k: m[k] for k in total} == pytest.approx(total, abs=1e-6)


def test_unet_only_sdxl_lora_exports_to_the_same_images(sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    from dreambooth.formats.lora import write_lora_file

    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl))
    torch.manual_seed(1)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    ours = write_lora_file(tmp_path / "pytorch_lora_weights.safetensors", FAMILIES["sdxl"], pipe.unet, {})
    kohya = tmp_path / "k.safetensors"
    assert main(["export", "--lora", str(ours), "--model", str(sdxl), str(kohya)]) == 0
    with safe_open(str(kohya), "pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())
    assert np.abs(_stock_images(sdxl, ours) - _stock_images(sdxl, kohya)).max() <= 1e-5


def test_native_resolution_comes_from_the_configs(sdxl, tmp_path):
    """768 px for SD 2.x-768 (UNet sample size 96), 1024 for SDXL (128): read from the configs only."""
    import json
    import shutil

    from dreambooth.models import native_size

    for sample_size, px in ((96, 768), (128, 1024)):
        model = tmp_path / f"m{sample_size}"
        shutil.copytree(sdxl, model)
        cfg = model / "unet" / "config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "sample_size": sample_size}))
        assert native_size(str(model)) == px


def test_validation_moves_both_text_encoders_back_to_the_accelerator(sdxl, tmp_path, monkeypatch):
    """Issue 18.7: caching moves SDXL's two text encoders off the accelerator and validation moved back
    only the first (a device mismatch on a GPU). The CPU has one device, so the test records what
    render moves to a stand-in accelerator's device, with the real pipeline sampling."""
    import contextlib
    from types import SimpleNamespace

    from dreambooth.config import TrainConfig
    from dreambooth.demo import example_subject
    from dreambooth.training import validation
    from dreambooth.training.loop import resolved, setup
    from dreambooth.training.preflight import preflight

    cfg = resolved(
        TrainConfig(
            model=str(sdxl),
            instance_dir=str(example_subject()),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            resolution=64,
            max_steps=1,
            rank=4,
            lr_scheduler="constant",
            validation_prompt=["a photo of sks dog"],
            validation_seeds=[0],
            validation_inference_steps=2,
        )
    )
    run = setup(cfg, preflight(cfg), progress=False)
    assert not run.method.trains_text_encoder  # so their embeddings were cached and they were moved off
    run.accelerator = SimpleNamespace(
        device=torch.device("cuda"), autocast=contextlib.nullcontext, is_main_process=True
    )
    moved = []
    for name in ("vae", "text_encoder", "text_encoder_2"):
        module = run.comps.vae if name == "vae" else run.comps.parts[name]
        monkeypatch.setattr(module, "to", lambda *a, _n=name, _m=module, **k: moved.append((_n, str(a[0]))) or _m)
    validation.render(run, 0)
    assert {name for name, device in moved if device == "cuda"} == {"vae", "text_encoder", "text_encoder_2"}
    assert {name for name, device in moved if device == "cpu"} == {"vae", "text_encoder", "text_encoder_2"}
