"""`dreambooth generate`: deterministic, per-component scales, fused fast path, settings in the PNG."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import consumers
from dreambooth.cli import main
from dreambooth.errors import UserError
from dreambooth.formats.pnginfo import a1111_text, parse_a1111, read_parameters


def gen(tiny_model, out, *args) -> list:
    rc = main(
        [
            "generate",
            "--model",
            str(tiny_model),
            "--prompt",
            "a photo of sks dog",
            "--steps",
            "4",
            "--output-dir",
            str(out),
            *args,
        ]
    )
    assert rc == 0
    return sorted(out.glob("*.png"))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_same_settings_give_the_same_file_byte_for_byte(tiny_model, lora_with_te, tmp_path):
    a = gen(tiny_model, tmp_path / "a", "--lora", str(lora_with_te), "--num-images", "2")
    b = gen(tiny_model, tmp_path / "b", "--lora", str(lora_with_te), "--num-images", "2")
    assert [p.name for p in a] == ["00000-0.png", "00001-1.png"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert not np.array_equal(pixels(a[0]), pixels(a[1]))  # seed + i: different images


def test_image_i_of_a_batch_is_reproduced_alone(tiny_model, tmp_path):
    batch = gen(tiny_model, tmp_path / "batch", "--num-images", "4", "--batch-size", "4", "--seed", "10")
    alone = gen(tiny_model, tmp_path / "alone", "--num-images", "1", "--seed", "12")
    # A batch of 4 and a batch of 1 round differently in the last bits of float32: one level at most.
    assert np.abs(pixels(batch[2]) - pixels(alone[0])).max() <= 1
    assert json.loads(batch[2].with_suffix(".json").read_text())["seed"] == 12


def test_scale_zero_is_exactly_the_base_model(tiny_model, lora_with_te, tmp_path):
    base = gen(tiny_model, tmp_path / "base")
    zero = gen(
        tiny_model,
        tmp_path / "zero",
        "--lora",
        str(lora_with_te),
        "--lora-scale-unet",
        "0",
        "--lora-scale-text-encoder",
        "0",
    )
    assert np.array_equal(pixels(base[0]), pixels(zero[0]))
    full = gen(tiny_model, tmp_path / "full", "--lora", str(lora_with_te))
    assert not np.array_equal(pixels(base[0]), pixels(full[0]))


def test_unet_and_text_encoder_scales_act_separately(tiny_model, lora_with_te, lora_unet_only, tmp_path):
    base = pixels(gen(tiny_model, tmp_path / "base")[0])

    def img(lora, su, ste, name):
        return pixels(
            gen(
                tiny_model,
                tmp_path / name,
                "--lora",
                str(lora),
                "--lora-scale-unet",
                su,
                "--lora-scale-text-encoder",
                ste,
            )[0]
        )

    unet_only, te_only = img(lora_with_te, "1", "0", "u"), img(lora_with_te, "0", "1", "t")
    assert not np.array_equal(unet_only, base) and not np.array_equal(te_only, base)
    assert not np.array_equal(unet_only, te_only)
    # A LoRA without text-encoder weights: the text-encoder scale changes nothing.
    assert np.array_equal(img(lora_unet_only, "1", "0", "n0"), img(lora_unet_only, "1", "1", "n1"))


def test_fused_and_unfused_agree(tiny_model, lora_with_te, tmp_path):
    args = ("--lora", str(lora_with_te), "--lora-scale-unet", "0.7", "--lora-scale-text-encoder", "0.4")
    fused = pixels(gen(tiny_model, tmp_path / "fused", *args)[0])
    unfused = pixels(gen(tiny_model, tmp_path / "unfused", *args, "--no-fuse")[0])
    assert np.abs(fused - unfused).max() <= 1


@pytest.mark.smoke
def test_png_carries_a1111_parameters_and_from_image_repeats_it(tiny_model, lora_with_te, tmp_path):
    (first, second) = gen(
        tiny_model,
        tmp_path / "orig",
        "--lora",
        str(lora_with_te),
        "--num-images",
        "2",
        "--negative-prompt",
        "blurry, dark",
        "--guidance",
        "5",
        "--scheduler",
        "euler-a",
        "--lora-scale-text-encoder",
        "0.8",
        "--seed",
        "1024",
    )
    text = read_parameters(second)
    lines = text.split("\n")
    assert lines[0] == "a photo of sks dog <lora:run:0.8:1>" and lines[1] == "Negative prompt: blurry, dark"
    assert lines[2].startswith("Steps: 4, Sampler: Euler a, CFG scale: 5.0, Seed: 1025, Size: 64x64, Model: model, ")
    sidecar = json.loads(second.with_suffix(".json").read_text())
    assert len(sidecar["lora_sha256"]) == 64 and sidecar["seed"] == 1025
    assert main(["generate", "--from-image", str(second), "--output-dir", str(tmp_path / "again")]) == 0
    (again,) = sorted((tmp_path / "again").glob("*.png"))
    assert np.array_equal(pixels(again), pixels(second))
    assert read_parameters(again) == text


def test_automatic1111_civitai_and_comfyui_find_the_lora_its_weights_and_its_hash(tiny_model, lora_with_te, tmp_path):
    """Issue 18.1: our PNG read by independent implementations of AUTOMATIC1111's infotext parser (with
    its LoRA hash lookup), civitai's parser and ComfyUI's PNG import; the hash is AUTOMATIC1111's hash of
    the kohya file `dreambooth export` writes."""
    args = ["--lora", str(lora_with_te), "--num-images", "1", "--lora-scale-text-encoder", "0.5"]
    (png,) = gen(tiny_model, tmp_path / "out", *args, "--lora-scale-unet", "0.75", "--guidance", "5")
    text = read_parameters(png)
    kohya = tmp_path / "loras" / "run.safetensors"
    kohya.parent.mkdir()
    assert main(["export", "--lora", str(lora_with_te), str(kohya)]) == 0
    short = consumers.a1111_short_hash(kohya)

    a1111 = consumers.a1111_parse(text)
    assert consumers.a1111_loras(a1111["Prompt"]) == [{"name": "run", "te": 0.5, "unet": 0.75}]
    assert consumers.a1111_lora_hashes(a1111["Lora hashes"]) == {"run": short}
    assert (a1111["Steps"], a1111["CFG scale"], a1111["Size-1"], a1111["Negative prompt"]) == ("4", "5.0", "64", "")
    renamed = consumers.a1111_paste(a1111["Prompt"], a1111, {short: "my-cat-v2"})  # a renamed copy is found
    assert renamed == "a photo of sks dog <lora:my-cat-v2:0.5:0.75>"

    civitai = consumers.civitai_parse(text)
    assert {"type": "lora", "name": "run", "hash": short} in civitai["resources"]
    assert civitai["prompt"] == "a photo of sks dog <lora:run:0.5:0.75>" and "Lora hashes" not in civitai["meta"]

    comfy = consumers.comfyui_import(text)
    assert comfy is not None and comfy["positive"] == "a photo of sks dog"
    assert comfy["loras"] == [{"name": "run", "strength_model": 0.5, "strength_clip": 0.5}]
    assert (comfy["opts"]["steps"], comfy["opts"]["seed"]) == ("4", "0")

    # one strength for both: the plain form civitai reads with its weight
    (png,) = gen(tiny_model, tmp_path / "same", "--lora", str(lora_with_te), "--num-images", "1", "--lora-scale-unet",
                 "0.8", "--lora-scale-text-encoder", "0.8")  # fmt: skip
    civitai = consumers.civitai_parse(read_parameters(png))
    assert {"type": "lora", "name": "run", "weight": 0.8, "hash": short} in civitai["resources"]


def test_from_image_reads_automatic1111s_form_and_finds_the_lora_by_its_hash(tiny_model, lora_with_te, tmp_path):
    """Issue 18.1: a PNG with only AUTOMATIC1111's parameters (another tool's, or ours with the JSON
    stripped) finds its LoRA in --lora-dir by AUTOMATIC1111's hash, under any file name."""
    (png,) = gen(tiny_model, tmp_path / "out", "--lora", str(lora_with_te), "--num-images", "1",
                 "--lora-scale-text-encoder", "0.5", "--seed", "7")  # fmt: skip
    text = read_parameters(png)
    theirs = tmp_path / "theirs.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.open(png).save(theirs, pnginfo=info)
    loras = tmp_path / "loras"
    loras.mkdir()
    assert main(["export", "--lora", str(lora_with_te), str(loras / "renamed-cat.safetensors")]) == 0
    (loras / "decoy.safetensors").write_bytes((loras / "renamed-cat.safetensors").read_bytes()[:-8] + bytes(8))
    from dreambooth.formats.pnginfo import settings_from_image

    got = settings_from_image(str(theirs), str(loras))
    assert Path(got["lora"]).name == "renamed-cat.safetensors"
    assert (got["lora_scale_text_encoder"], got["lora_scale_unet"]) == (0.5, 1.0)
    assert (got["prompt"], got["seed"], got["steps"]) == (["a photo of sks dog"], 7, 4)
    out = tmp_path / "again"
    assert main(["generate", "--from-image", str(theirs), "--lora-dir", str(loras), "--model", str(tiny_model),
                 "--output-dir", str(out)]) == 0  # fmt: skip
    (again,) = out.glob("*.png")
    assert np.abs(pixels(again) - pixels(png)).max() <= 2  # the kohya file: the same LoRA
    assert main(["generate", "--from-image", str(theirs), "--model", str(tiny_model), "--output-dir",
                 str(tmp_path / "none")]) == 2  # fmt: skip
    two = tmp_path / "two.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text.replace("<lora:", "<lora:other:1> <lora:", 1))
    Image.open(png).save(two, pnginfo=info)
    with pytest.raises(UserError, match="applies 2 LoRAs"):
        settings_from_image(str(two), str(loras))


def test_a1111_text_round_trips_and_reads_other_tools_images():
    settings = dict(
        prompt="a photo of sks cat, in a bucket",
        negative_prompt="ugly",
        steps=30,
        scheduler="dpm++2m-karras",
        guidance=5.0,
        seed=1024,
        width=512,
        height=768,
        model="/models/sd15.safetensors",
        model_name="sd15",
        model_hash="0123456789",
        lora="/runs/cat/pytorch_lora_weights.safetensors",
        lora_tag_name="cat",
        lora_a1111_hash="ab" * 6,
        lora_scale_unet=1.0,
        lora_scale_text_encoder=0.8,
        zero_terminal_snr=True,
    )
    back = parse_a1111(a1111_text(settings))
    for key in ("negative_prompt", "steps", "scheduler", "guidance", "seed", "width", "height", "zero_terminal_snr"):
        assert back[key] == settings[key], key
    assert back["loras"] == [{"name": "cat", "text_encoder": 0.8, "unet": 1.0, "hash": "ab" * 6}]
    assert back["prompt"] == [settings["prompt"]] and back["model"] == "sd15"
    assert "Model hash: 0123456789, Model: sd15," in a1111_text(settings)
    theirs = "masterpiece, cat\nNegative prompt: lowres\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly"
    got = parse_a1111(theirs)
    assert (got["scheduler"], got["seed"], got["steps"], got["model"]) == ("euler-a", 42, 20, "v1-5-pruned-emaonly")
    named = parse_a1111("a <lora:x:te=0.3:unet=0.7> cat\nSteps: 20, Seed: 1, CFG scale: 7")
    assert named["prompt"] == ["a cat"] and named["loras"] == [
        {"name": "x", "text_encoder": 0.3, "unet": 0.7, "hash": None}
    ]


@pytest.mark.parametrize(
    "args,named",
    [
        (["--scheduler", "heun"], "--scheduler"),
        (["--lora", "nope/missing"], "--lora"),
        (["--steps", "0"], "--steps"),
        (["--width", "100", "--height", "64"], "--width"),
        (["--prompts-file", "missing.txt"], "--prompts-file"),
    ],
)
def test_bad_generate_input(tiny_model, tmp_path, capsys, args, named):
    rc = main(["generate", "--model", str(tiny_model), "--prompt", "p", "--output-dir", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_lora_that_does_not_fit_is_refused(tiny_model, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"  # right names, wrong shapes (another architecture)
    save_file(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 77),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(77, 4),
        },
        wrong,
    )
    junk = tmp_path / "junk.safetensors"
    save_file({"something.else": torch.zeros(3)}, junk)
    for f in (wrong, junk):
        rc = main(
            [
                "generate",
                "--model",
                str(tiny_model),
                "--prompt",
                "p",
                "--lora",
                str(f),
                "--steps",
                "2",
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "--lora" in err, err
    assert not list((tmp_path / "o").glob("*.png"))


def test_from_image_without_settings_is_refused(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert main(["generate", "--from-image", str(tmp_path / "plain.png")]) == 2
    assert "no 'parameters'" in capsys.readouterr().err
