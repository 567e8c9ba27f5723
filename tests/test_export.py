"""`dreambooth export --format kohya` (issue 7): the kohya/AUTOMATIC1111/ComfyUI layout, loaded by
stock diffusers to the same images as our own file, alpha != rank included."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dreambooth.cli import main
from dreambooth.families.sdxl import sgm_module_name


def _images(model, lora_path, prompt="a photo of sks dog"):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora_path.parent), weight_name=lora_path.name)
    out = pipe(
        prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", height=64, width=64
    )
    return out.images[0]


@pytest.fixture(scope="module")
def lora_alpha_ne_rank(tmp_path_factory, tiny_model):
    from dreambooth.config import TrainConfig
    from dreambooth.demo import example_subject
    from dreambooth.training.loop import train

    out = tmp_path_factory.mktemp("alpha") / "run"
    cfg = TrainConfig(
        model=str(tiny_model),
        instance_dir=str(example_subject()),
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        resolution=64,
        max_steps=3,
        learning_rate=5e-2,
        lr_scheduler="constant",
        rank=4,
        lora_alpha=16,
        lora_targets="attn,ff,conv",
        train_text_encoder=True,
        text_encoder_lr=5e-2,
        checkpoint_every=100,
    )
    return train(cfg, progress=False)


@pytest.mark.smoke
def test_kohya_export_loads_in_stock_diffusers_to_the_same_images(tiny_model, lora_alpha_ne_rank, tmp_path):
    out = tmp_path / "my-dog.safetensors"
    assert main(["export", "--lora", str(lora_alpha_ne_rank), "--format", "kohya", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any("_resnets_0_conv1.lora_down.weight" in k for k in keys)  # LoCon-style conv layers too
    assert alphas == {16.0}  # alpha != rank kept: scale 16/4
    assert (
        meta["ss_network_dim"] == "4"
        and meta["ss_network_alpha"] == "16.0"
        and meta["ss_base_model_version"] == "sd_v1"
        and meta["ss_v2"] == "False"
    )
    ours = _images(tiny_model, lora_alpha_ne_rank / "pytorch_lora_weights.safetensors")
    theirs = _images(tiny_model, out)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_export_refuses_bad_input_and_keeps_existing_files(lora_alpha_ne_rank, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    assert main(["export", "--lora", str(lora_alpha_ne_rank), str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["export", "--lora", str(tmp_path / "nope"), str(tmp_path / "y.safetensors")]) == 2
    assert main(["export", "--lora", str(lora_alpha_ne_rank), str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such file or folder" in err[0] and "must end in .safetensors" in err[1]


def test_sgm_names_are_what_diffusers_maps_back():
    from diffusers.loaders.lora_conversion_utils import _convert_unet_lora_key, _maybe_map_sgm_blocks_to_diffusers

    config = {"layers_per_block": 2, "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    names = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.1.proj_in",
        "down_blocks.1.resnets.1.conv1",
        "down_blocks.0.downsamplers.0.conv",
        "mid_block.attentions.0.transformer_blocks.3.attn2.to_k",
        "mid_block.resnets.1.conv2",
        "up_blocks.0.attentions.2.transformer_blocks.0.ff.net.2",
        "up_blocks.1.resnets.2.conv_shortcut",
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.2.resnets.0.time_emb_proj",
    ]
    for name in names:
        kohya = "lora_unet_" + sgm_module_name(name, 2, up_attn).replace(".", "_") + ".lora_down.weight"
        mapped = _maybe_map_sgm_blocks_to_diffusers({kohya: 0}, SimpleNamespace(**config))
        (key,) = mapped
        back = _convert_unet_lora_key(key).replace(".processor", "").replace("to_out_lora", "to_out.0_lora")
        back = back.replace("_lora.down.weight", "").replace(".lora.down.weight", "").replace(".lora_down.weight", "")
        assert back.replace("_", ".") == name.replace("_", "."), (name, kohya, back)


def test_generate_takes_a_kohya_file_as_well_as_ours(tiny_model, lora_alpha_ne_rank, tmp_path):
    from PIL import Image

    kohya = tmp_path / "k.safetensors"
    assert main(["export", "--lora", str(lora_alpha_ne_rank), str(kohya)]) == 0
    images = []
    for name, lora in (("ours", lora_alpha_ne_rank), ("kohya", kohya)):
        out = tmp_path / name
        args = ["generate", "--model", str(tiny_model), "--lora", str(lora), "--prompt", "a photo of sks dog"]
        assert main([*args, "--steps", "3", "--lora-scale-unet", "0.7", "--output-dir", str(out)]) == 0
        images.append(np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted(out.glob("*.png"))]))
    assert images[0].shape == images[1].shape and len(images[0]) >= 1
    assert np.abs(images[0] - images[1]).max() <= 1  # 8-bit images: at most one level of rounding apart


def test_train_save_format_writes_the_kohya_file_too(tiny_model, lora_alpha_ne_rank, tmp_path, capsys):
    from safetensors.torch import load_file

    from dreambooth.demo import example_subject

    base = ["train", "--model", str(tiny_model), "--instance-dir", str(example_subject())]
    base += ["--instance-prompt", "a photo of sks dog", "--resolution", "64", "--max-steps", "2"]
    base += ["--lr-scheduler", "constant"]
    both, kohya_only = tmp_path / "my-dog", tmp_path / "my-dog-k"
    assert main([*base, "--output-dir", str(both), "--save-format", "both", "--checkpoint-every", "1"]) == 0
    assert (both / "pytorch_lora_weights.safetensors").is_file()
    exported = tmp_path / "exported.safetensors"
    assert main(["export", "--lora", str(both), str(exported)]) == 0
    written, expected = load_file(str(both / "my-dog.safetensors")), load_file(str(exported))
    assert written.keys() == expected.keys() and all(k.startswith("lora_unet_") for k in written)
    assert all(torch_equal(written[k], expected[k]) for k in written)
    assert (both / "checkpoints" / "step-1" / "my-dog.safetensors").is_file()  # checkpoints too

    assert main([*base, "--output-dir", str(kohya_only), "--save-format", "kohya"]) == 0
    assert sorted(f.name for f in kohya_only.glob("*.safetensors")) == ["my-dog-k.safetensors"]
    out = tmp_path / "gen"
    gen = ["generate", "--model", str(tiny_model), "--lora", str(kohya_only), "--prompt", "a photo of sks dog"]
    assert main([*gen, "--steps", "2", "--output-dir", str(out)]) == 0  # our commands take the run folder
    assert list(out.glob("*.png"))

    ti = [*base, "--output-dir", str(tmp_path / "ti"), "--method", "textual-inversion", "--token", "<d>"]
    assert main([*ti, "--initializer-token", "dog", "--save-format", "kohya"]) == 2
    assert "--save-format" in capsys.readouterr().err and not (tmp_path / "ti").exists()


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_train_init_lora_starts_from_a_kohya_or_diffusers_file(tiny_model, lora_alpha_ne_rank, tmp_path, capsys):
    """`train --init-lora` continues from a trained LoRA in either layout: its rank, alpha, targets and
    text-encoder LoRA are kept; with a vanishing learning rate the result is the file it began from."""
    import yaml
    from safetensors.torch import load_file

    from dreambooth.demo import example_subject
    from helpers import max_abs_diff

    kohya = tmp_path / "k.safetensors"
    assert main(["export", "--lora", str(lora_alpha_ne_rank), str(kohya)]) == 0
    original = load_file(str(lora_alpha_ne_rank / "pytorch_lora_weights.safetensors"))
    base = ["train", "--model", str(tiny_model), "--instance-dir", str(example_subject())]
    base += ["--instance-prompt", "a photo of sks dog", "--resolution", "64", "--max-steps", "1"]
    base += ["--lr-scheduler", "constant", "--learning-rate", "1e-12", "--adam-weight-decay", "0"]
    for name, init in (("from-kohya", kohya), ("from-diffusers", lora_alpha_ne_rank)):
        out = tmp_path / name
        assert main([*base, "--init-lora", str(init), "--output-dir", str(out)]) == 0
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert cfg["rank"] == 4 and cfg["lora_alpha"] == 16.0, cfg
        continued = load_file(str(out / "pytorch_lora_weights.safetensors"))
        assert max_abs_diff(continued, original) <= 1e-6  # conv, ff and text-encoder layers all came back

    bad = tmp_path / "not-a-lora.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(bad))
    assert main([*base, "--init-lora", str(bad), "--output-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --init-lora") and "no UNet LoRA" in err[-1], err
    assert not (tmp_path / "bad").exists()
    ti = [*base, "--method", "textual-inversion", "--token", "<d>", "--initializer-token", "dog"]
    assert main([*ti, "--init-lora", str(kohya), "--output-dir", str(tmp_path / "ti")]) == 2


def test_kohya_converts_back_to_diffusers_and_round_trips(tiny_model, lora_alpha_ne_rank, tmp_path, capsys):
    """kohya -> diffusers (against the base model) -> kohya: the same tensors both ways, and stock
    diffusers draws the same images from all three files."""
    from safetensors.torch import load_file

    ours = lora_alpha_ne_rank / "pytorch_lora_weights.safetensors"
    kohya, back, again = (tmp_path / n for n in ("k.safetensors", "back.safetensors", "k2.safetensors"))
    assert main(["export", "--lora", str(ours), str(kohya)]) == 0
    assert main(["export", "--lora", str(kohya), "--format", "diffusers", str(back)]) == 2  # which base model?
    assert "give --model" in capsys.readouterr().err and not back.exists()
    assert main(["export", "--lora", str(kohya), "--format", "diffusers", "--model", str(tiny_model), str(back)]) == 0
    a, b = load_file(str(ours)), load_file(str(back))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    assert main(["export", "--lora", str(back), "--model", str(tiny_model), str(again)]) == 0
    k1, k2 = load_file(str(kohya)), load_file(str(again))
    assert k1.keys() == k2.keys() and all(torch_equal(k1[k], k2[k]) for k in k1)
    first = _images(tiny_model, ours)
    for other in (kohya, back):
        assert np.abs(first - _images(tiny_model, other)).max() <= 1e-5


def test_kohya_export_of_a_unet_only_lora_gives_the_same_images(tiny_model, lora_unet_only, tmp_path):
    out = tmp_path / "unet-only.safetensors"
    assert main(["export", "--lora", str(lora_unet_only), str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())
    ours = _images(tiny_model, lora_unet_only / "pytorch_lora_weights.safetensors")
    assert np.abs(ours - _images(tiny_model, out)).max() <= 1e-5


@pytest.fixture(scope="module")
def dora_run(tmp_path_factory, tiny_model):
    """A DoRA run on linear and conv layers, UNet and text encoder, alpha != rank, with its kohya file."""
    from dreambooth.config import TrainConfig
    from dreambooth.demo import example_subject
    from dreambooth.training.loop import train

    cfg = TrainConfig(
        model=str(tiny_model),
        instance_dir=str(example_subject()),
        instance_prompt="a photo of sks dog",
        output_dir=str(tmp_path_factory.mktemp("dora") / "run"),
        resolution=64,
        max_steps=3,
        learning_rate=5e-2,
        text_encoder_lr=5e-2,
        lr_scheduler="constant",
        rank=4,
        lora_alpha=8,
        lora_targets="attn,conv",
        use_dora=True,
        train_text_encoder=True,
        save_format="both",
        checkpoint_every=100,
    )
    return train(cfg, progress=False)


def _peft_merged(model, run):
    """peft's own merged weights of the run: stock diffusers loads its diffusers file and fuses it."""
    from diffusers import StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(str(model))
    pipe = StableDiffusionPipeline.from_pretrained(str(model))
    pipe.load_lora_weights(str(run))
    pipe.fuse_lora(components=["unet", "text_encoder"])
    pipe.unload_lora_weights()
    return base, pipe


def _merge_errors(model, run, kohya_file, merge):
    """For every module of the kohya file: |merge(base weight, file) - peft's W'| / |peft's W' - W|."""
    from safetensors.torch import load_file

    base, fused = _peft_merged(model, run)
    state = load_file(kohya_file)
    errors = {}
    for key in [k for k in state if k.endswith(".dora_scale")]:
        stem = key[: -len(".dora_scale")]
        prefix, comp = ("lora_unet_", "unet") if stem.startswith("lora_unet_") else ("lora_te_", "text_encoder")
        modules = dict(getattr(base, comp).named_modules())
        (path,) = [p for p in modules if p.replace(".", "_") == stem[len(prefix) :].removeprefix("text_model_")]
        w = modules[path].weight.detach()
        w_peft = dict(getattr(fused, comp).named_modules())[path].weight.detach()
        up, down = state[f"{stem}.lora_up.weight"], state[f"{stem}.lora_down.weight"]
        merged = merge(w, up, down, float(state[f"{stem}.alpha"]), state[key])
        errors[f"{comp}.{path}"] = float((merged - w_peft).norm() / (w_peft - w).norm())
    assert any(k.startswith("text_encoder.") for k in errors) and any("conv" in k for k in errors)
    return errors


def test_dora_kohya_files_merge_to_peft_weights_in_comfyui_and_lycoris_and_a1111_is_refused(
    tiny_model, dora_run, tmp_path, capsys
):
    """Issue 18.2, with independent implementations of each program's published merge (consumers.py):
    the run's kohya file (--dora-for comfyui, the default) merges to peft's own weights in ComfyUI, an
    export --dora-for lycoris in LyCORIS; AUTOMATIC1111 merges neither right, so it is refused by name."""
    from safetensors.torch import load_file

    import consumers

    kohya = dora_run / "run.safetensors"
    comfy = _merge_errors(tiny_model, dora_run, kohya, consumers.comfyui_merge)
    assert max(comfy.values()) < 1e-4, comfy
    lycoris_file = tmp_path / "lycoris.safetensors"
    assert main(["export", "--lora", str(dora_run), "--dora-for", "lycoris", str(lycoris_file)]) == 0
    lycoris = _merge_errors(tiny_model, dora_run, lycoris_file, consumers.lycoris_merge)
    assert max(lycoris.values()) < 1e-4, lycoris
    # the other's file is wrong in each (why --dora-for exists), and AUTOMATIC1111's merge is wrong for both
    assert min(_merge_errors(tiny_model, dora_run, lycoris_file, consumers.comfyui_merge).values()) > 1e-3
    for f in (kohya, lycoris_file):
        assert sorted(_merge_errors(tiny_model, dora_run, f, consumers.a1111_merge).values())[1] > 1e-2
    shapes = {tuple(v.shape) for k, v in load_file(lycoris_file).items() if k.endswith("dora_scale")}
    assert all(s[1:] in ((1,), (1, 1, 1)) for s in shapes)
    # exported for ComfyUI from the run folder (base model from its config): the same file as training's
    again = tmp_path / "comfy.safetensors"
    assert main(["export", "--lora", str(dora_run), str(again)]) == 0
    assert load_file(again).keys() == load_file(kohya).keys()
    assert all(torch.allclose(load_file(again)[k], v, atol=1e-6) for k, v in load_file(kohya).items())
    capsys.readouterr()
    refused = tmp_path / "a1111.safetensors"
    assert main(["export", "--lora", str(dora_run), "--dora-for", "automatic1111", str(refused)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "AUTOMATIC1111" in err and not refused.exists()
    args = ["train", "--model", str(tiny_model), "--instance-dir", "x", "--instance-prompt", "a sks dog",
            "--output-dir", str(tmp_path / "r"), "--use-dora", "--save-format", "both", "--dora-for", "automatic1111"]  # fmt: skip
    assert main(args) == 2 and "AUTOMATIC1111" in capsys.readouterr().err
