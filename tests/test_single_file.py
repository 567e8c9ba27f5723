"""Single-file checkpoints (issue 7): `--model FILE.safetensors` in every command through diffusers'
from_single_file with the right config, `export --format single-file`, and pickles refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import consumers
from dreambooth.cli import main
from dreambooth.demo import example_subject


@pytest.fixture(scope="module")
def single_file(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sf") / "tiny.safetensors"
    assert main(["export", "--model", str(tiny_model), "--format", "single-file", "--dtype", "fp32", str(out)]) == 0
    return out


def test_the_written_file_has_the_original_layout_and_loads_to_the_same_weights(tiny_model, single_file):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    with safe_open(str(single_file), "pt") as f:
        keys = list(f.keys())
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert (
        "model.diffusion_model.input_blocks.0.0.weight" in keys
        and "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    )
    ours = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None)
    theirs = StableDiffusionPipeline.from_single_file(
        str(single_file), config=str(tiny_model), local_files_only=True, safety_checker=None
    )
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_generate_and_train_take_a_single_file(tiny_model, single_file, tmp_path, capsys):
    prompt = ["--prompt", "a photo of sks dog", "--steps", "3", "--num-images", "1"]
    images = []
    for name, model in (("folder", [str(tiny_model)]), ("file", [str(single_file), "--model-config", str(tiny_model)])):
        assert main(["generate", "--model", *model, *prompt, "--output-dir", str(tmp_path / name)]) == 0
        (png,) = (tmp_path / name).glob("*.png")
        images.append(np.asarray(Image.open(png), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1
    # AUTOMATIC1111 names a single file by its stem and the first 10 hex digits of its SHA-256 (issue 18.1)
    text = Image.open(png).text["parameters"]
    assert consumers.a1111_parse(text)["Model hash"] == consumers.a1111_model_hash(single_file)
    model = {"type": "model", "name": "tiny", "hash": consumers.a1111_model_hash(single_file)}
    assert model in consumers.civitai_parse(text)["resources"]

    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        str(single_file),
        "--model-config",
        str(tiny_model),
        "--instance-dir",
        str(example_subject()),
    ]
    args += ["--instance-prompt", "a photo of sks dog", "--resolution", "64", "--max-steps", "2", "--rank", "4"]
    assert main([*args, "--lr-scheduler", "constant", "--output-dir", str(run)]) == 0
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    assert f'from_single_file("{single_file}", config="{tiny_model}")' in (run / "README.md").read_text()

    # Offline, with no --model-config, the configs diffusers infers (stable-diffusion-v1-5) are not there
    assert main(["generate", "--model", str(single_file), *prompt, "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--model-config" in err and "HF_HUB_OFFLINE" in err and not (tmp_path / "x").exists()


def test_a_pickled_checkpoint_is_refused_unless_allowed(tiny_model, single_file, tmp_path, capsys):
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single_file))}, ckpt)
    gen = ["generate", "--model", str(ckpt), "--model-config", str(tiny_model), "--prompt", "a dog", "--steps", "2"]
    assert main([*gen, "--num-images", "1", "--output-dir", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickled" in err[0] and "--allow-pickle" in err[0]
    assert not (tmp_path / "no").exists()
    assert main([*gen, "--num-images", "1", "--allow-pickle", "--output-dir", str(tmp_path / "yes")]) == 0
    assert len(list((tmp_path / "yes").glob("*.png"))) == 1


def test_single_file_export_and_model_config_refuse_bad_input(tiny_model, single_file, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["export", "--model", str(single_file), "--format", "single-file", str(out)]) == 2
    assert main(["export", "--lora", str(tiny_model), "--format", "single-file", str(out)]) == 2
    gen = ["generate", "--model", str(tiny_model), "--model-config", str(tiny_model), "--prompt", "a dog"]
    assert main([*gen, "--output-dir", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "is a single file already" in err[0] and "exports --model" in err[1] and "only for a single-file" in err[2]
    assert not out.exists() and not (tmp_path / "g").exists()
