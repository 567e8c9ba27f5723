"""--adapter loha | lokr (issue 21): peft's LoHa and LoKr, saved in LyCORIS's layout; the file merged
the way ComfyUI merges it (tests/consumers.py) draws what our generate draws with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from consumers import comfyui_lycoris_delta
from dreambooth.cli import main


@pytest.mark.parametrize("adapter", ["loha", "lokr"])
def test_lycoris_file_merged_as_comfyui_does_draws_what_generate_draws(tiny_model, tmp_path, adapter):
    from diffusers import StableDiffusionPipeline

    from dreambooth.demo import example_subject

    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model), "--instance-dir", str(example_subject()), "--instance-prompt",
                 "a photo of sks dog", "--output-dir", str(run), "--resolution", "64", "--rank", "4",
                 "--lora-alpha", "2", "--max-steps", "3", "--lr-scheduler", "constant", "--learning-rate", "1e-2",
                 "--adapter", adapter, "--train-text-encoder", "--text-encoder-lr", "1e-2"]) == 0  # fmt: skip
    state = load_file(str(run / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("lora_unet_") for k in state) and any(k.startswith("lora_te_") for k in state)
    # ComfyUI's side: kohya names to the model's modules, each module's change added to its weight
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None)
    names = {f"lora_unet_{n.replace('.', '_')}": m for n, m in pipe.unet.named_modules() if n}
    names |= {f"lora_te_text_model_{n.replace('.', '_')}": m for n, m in pipe.text_encoder.named_modules() if n}
    modules: dict[str, dict] = {}
    for key, value in state.items():
        name, _, part = key.rpartition(".")
        modules.setdefault(name, {})[part] = value
    changed = 0
    with torch.no_grad():
        for name, parts in modules.items():
            weight = names[name].weight
            alpha = float(parts.pop("alpha")) if "alpha" in parts else None
            change = comfyui_lycoris_delta(parts, alpha, weight.shape)
            changed += bool(change.abs().max() > 0)
            weight += change
    assert changed == len(modules)  # every module trained
    merged = tmp_path / "merged"
    pipe.save_pretrained(merged)
    images = []
    for name, args in (("ours", ["--model", str(tiny_model), "--lora", str(run)]), ("comfy", ["--model", str(merged)])):
        assert main(["generate", *args, "--prompt", "a photo of sks dog", "--num-images", "1", "--steps", "3",
                     "--output-dir", str(tmp_path / name)]) == 0  # fmt: skip
        images.append(np.asarray(Image.open(next((tmp_path / name).glob("*.png"))), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1
    base = tmp_path / "base"
    assert main(["generate", "--model", str(tiny_model), "--prompt", "a photo of sks dog", "--num-images", "1",
                 "--steps", "3", "--output-dir", str(base)]) == 0  # fmt: skip
    assert np.abs(np.asarray(Image.open(next(base.glob("*.png"))), dtype=np.int16) - images[0]).max() > 2


@pytest.mark.parametrize("flags,named", [(["--use-dora"], "--adapter"), (["--save-format", "kohya"], "--save-format")])
def test_what_loha_cannot_do_is_one_line(tiny_model, tmp_path, capsys, flags, named):
    from dreambooth.demo import example_subject

    assert main(["train", "--model", str(tiny_model), "--instance-dir", str(example_subject()), "--instance-prompt",
                 "a photo of sks dog", "--output-dir", str(tmp_path / "run"), "--adapter", "loha", *flags]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {named}"), err


def test_sdxl_loha_uses_kohyas_sdxl_names_and_generates(tmp_path):
    """On SDXL kohya's names are the original (SGM) model's: the LoHa file's modules are those a LoRA
    export of the same targets names, and generate loads it back (through the same names)."""
    from dreambooth.demo import example_subject

    model, run = tmp_path / "sdxl", tmp_path / "run"
    assert main(["tiny-model", str(model), "--arch", "sdxl"]) == 0
    common = ["train", "--model", str(model), "--instance-dir", str(example_subject()), "--instance-prompt",
              "a photo of sks dog", "--resolution", "64", "--rank", "4", "--max-steps", "1", "--lr-scheduler",
              "constant", "--train-text-encoder"]  # fmt: skip
    assert main([*common, "--adapter", "loha", "--output-dir", str(run)]) == 0
    assert main([*common, "--save-format", "kohya", "--output-dir", str(tmp_path / "lora")]) == 0
    loha = {k.rsplit(".", 1)[0] for k in load_file(str(run / "pytorch_lora_weights.safetensors"))}
    lora = {k.rsplit(".", 2)[0] if "lora_" in k.rsplit(".", 2)[-2] else k.rsplit(".", 1)[0]
            for k in load_file(str(tmp_path / "lora" / "lora.safetensors"))}  # fmt: skip
    assert loha == lora and any(k.startswith("lora_unet_input_blocks_") for k in loha)
    assert any(k.startswith("lora_te2_") for k in loha)
    assert main(["generate", "--model", str(model), "--lora", str(run), "--prompt", "a photo of sks dog",
                 "--num-images", "1", "--steps", "2", "--output-dir", str(tmp_path / "images")]) == 0  # fmt: skip
