"""Model families as units (issue 20, first part): which family a model is comes from its configs, a
family not supported is one line before any weight loads, and what differs between families is asked
of the family (pipeline class, text encoders, kohya names, embedding layout)."""

from __future__ import annotations

import json
import shutil

import pytest

from dreambooth.cli import main
from dreambooth.families import FAMILIES, family_of_lora
from dreambooth.models import family_of


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for arch in ("sd2", "sdxl"):
        assert main(["tiny-model", str(root / arch), "--arch", arch]) == 0
    return root


def test_each_model_is_recognised_from_its_configs(tiny_model, tiny_models):
    assert family_of(str(tiny_model)).name == "sd1"
    assert family_of(str(tiny_models / "sd2")).name == "sd2"
    assert family_of(str(tiny_models / "sdxl")).name == "sdxl"
    assert family_of("toyworld").name == "sd1"
    sdxl = FAMILIES["sdxl"]
    assert sdxl.pipeline == "StableDiffusionXLPipeline" and sdxl.text_encoders == ("text_encoder", "text_encoder_2")
    assert FAMILIES["sd1"].text_encoders == ("text_encoder",) and FAMILIES["sd2"].kohya_version == "sd_v2"
    from dreambooth.formats.kohya import kohya_metadata

    adapter = {"unet.r": 4, "unet.lora_alpha": 4}  # kohya's ss_v2 (its --v2) is true for SD 2.x alone
    assert {n: kohya_metadata(adapter, None, f, "x")["ss_v2"] for n, f in FAMILIES.items()} == {
        n: str(n == "sd2") for n in FAMILIES
    }


def test_a_family_not_supported_is_one_line_before_any_weight_loads(tiny_model, tmp_path, capsys):
    video = tmp_path / "video"
    shutil.copytree(tiny_model, video)
    index = json.loads((video / "model_index.json").read_text())
    (video / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableVideoDiffusionPipeline"}))
    for weights in video.rglob("*.safetensors"):
        weights.write_bytes(b"not weights")  # nothing may read them
    out = tmp_path / "out"
    assert main(["generate", "--model", str(video), "--prompt", "a dog", "--output-dir", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "StableVideoDiffusionPipeline" in line and "which this tool does not train" in line
    assert all(f.label in line for f in FAMILIES.values()) and not out.exists()
    args = ["train", "--model", str(video), "--instance-dir", str(tmp_path), "--instance-prompt", "a sks dog",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2 and "StableVideoDiffusionPipeline" in capsys.readouterr().err


def test_a_second_text_encoder_setting_is_refused_for_a_family_with_one(make_cfg, capsys):
    cfg = make_cfg(text_encoder_2_lr=1e-4)
    args = ["train", "--model", cfg.model, "--instance-dir", cfg.instance_dir, "--instance-prompt",
            cfg.instance_prompt, "--output-dir", cfg.output_dir, "--text-encoder-2-lr", "1e-4"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--text-encoder-2-lr" in err and "Stable Diffusion 1.x" in err


def test_a_lora_file_alone_says_its_family(tiny_models):
    import torch

    sd2 = {"unet.down.attn2.to_k.lora_A.weight": torch.zeros(4, 1024)}
    sdxl = {"text_encoder_2.text_model.q_proj.lora_A.weight": torch.zeros(4, 8)}
    sd1 = {"unet.down.attn2.to_k.lora_A.weight": torch.zeros(4, 768)}
    assert [family_of_lora(s).name for s in (sd1, sd2, sdxl)] == ["sd1", "sd2", "sdxl"]


def test_the_model_card_loads_the_run_with_its_familys_pipeline(tiny_models, tmp_path):
    from dreambooth.demo import example_subject

    run = tmp_path / "run"
    args = ["train", "--model", str(tiny_models / "sdxl"), "--instance-dir", str(example_subject()),
            "--instance-prompt", "a photo of sks dog", "--output-dir", str(run), "--resolution", "64",
            "--max-steps", "1", "--rank", "4", "--lr-scheduler", "constant"]  # fmt: skip
    assert main(args) == 0
    card = (run / "README.md").read_text()
    assert "from diffusers import StableDiffusionXLPipeline" in card
    assert f'StableDiffusionXLPipeline.from_pretrained("{tiny_models / "sdxl"}")' in card
