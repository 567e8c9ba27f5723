"""Pivotal tuning (issue 11): the identifier's embedding learned with the LoRA, in one run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.data.examples import tokenize
from dreambooth.training.loop import fit, resolved, setup, train
from dreambooth.training.preflight import preflight


@pytest.mark.parametrize("text_encoder_lora", [False, True])
def test_the_identifier_becomes_a_learned_token_and_nothing_else_in_the_embedding_moves(make_cfg, text_encoder_lora):
    """With the text encoder's LoRA too (peft's add_adapter froze the embedding, so it never trained)."""
    cfg = make_cfg(
        train_identifier_embedding=True, identifier_lr=1e-2, max_steps=3, train_text_encoder=text_encoder_lora
    )
    cfg = resolved(cfg)
    run = setup(cfg, preflight(cfg), progress=False)
    tok, te = run.comps.tokenizer, run.comps.text_encoder
    (token_id,) = tok.convert_tokens_to_ids(["<sks>"])
    sks = tok.encode("sks", add_special_tokens=False)
    emb = te.get_input_embeddings().weight
    start = emb.detach().clone()
    assert torch.equal(start[token_id], start[sks].mean(0))  # it starts as sks
    assert torch.equal(run.data.instance.prompt_ids[0], tokenize(tok, "a photo of <sks> dog")[0])
    fit(run, progress=False)
    moved = (emb.detach() - start).abs().amax(1)
    assert moved[token_id] > 0 and moved.sum() == moved[token_id]  # only its row


def test_a_pivotal_run_saves_both_loads_both_and_bundles_the_embedding_for_automatic1111(make_cfg, tmp_path):
    cfg = make_cfg(train_identifier_embedding=True, identifier_lr=1e-2, max_steps=3, save_format="both")
    out = train(cfg, progress=False)
    with safe_open(str(out / "learned_embeds.safetensors"), "pt") as f:
        assert f.metadata()["token"] == "<sks>" and f.metadata()["identifier"] == "sks"
        assert list(f.keys()) == ["<sks>"] and f.get_tensor("<sks>").shape[0] == 1
    (kohya,) = [p for p in out.glob("*.safetensors") if p.name not in ("pytorch_lora_weights.safetensors",
                                                                        "learned_embeds.safetensors")]  # fmt: skip
    bundle = load_file(kohya)["bundle_emb.<sks>.string_to_param.*"]
    assert torch.equal(bundle, load_file(out / "learned_embeds.safetensors")["<sks>"])
    assert json.loads((out / "run.json").read_text())["files"][-1] == "learned_embeds.safetensors"
    gen = tmp_path / "gen"
    args = ["generate", "--model", cfg.model, "--prompt", "a photo of sks dog", "--steps", "2", "--num-images", "1"]
    assert main([*args, "--lora", str(out), "--output-dir", str(gen)]) == 0
    (png,) = gen.glob("*.png")
    settings = json.loads(Image.open(png).text["dreambooth"])
    assert settings["prompt"] == "a photo of <sks> dog" and settings["embedding"].endswith("learned_embeds.safetensors")
    # the kohya file's bundled embedding is for AUTOMATIC1111; beside its run's embedding, generate takes
    # the file (its LoRA layers, the run's embedding) to the same image; alone elsewhere, it is refused
    assert main([*args, "--lora", str(kohya), "--output-dir", str(tmp_path / "g2")]) == 0
    (png2,) = (tmp_path / "g2").glob("*.png")
    settings2 = json.loads(Image.open(png2).text["dreambooth"])
    assert settings2["prompt"] == "a photo of <sks> dog" and settings2["embedding"] == settings["embedding"]
    assert np.abs(np.asarray(Image.open(png2), np.int16) - np.asarray(Image.open(png), np.int16)).max() <= 2
    alone = tmp_path / "alone" / "run.safetensors"
    alone.parent.mkdir()
    alone.write_bytes(kohya.read_bytes())
    assert main([*args, "--lora", str(alone), "--output-dir", str(tmp_path / "g3")]) == 2


@pytest.mark.smoke
def test_pivotal_tuning_with_text_encoder_lora_saves_only_lora_layers_and_exports(make_cfg, tiny_model, tmp_path):
    """Issue 18.3: the resized token-embedding matrix stayed in the LoRA file, so the kohya file (and the
    run, with --save-format both) failed at the final save after training."""
    from diffusers import StableDiffusionPipeline

    cfg = make_cfg(
        train_identifier_embedding=True, train_text_encoder=True, identifier_lr=1e-2, max_steps=2, save_format="both"
    )
    out = train(cfg, progress=False)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "finished" and "unsaved" not in status
    state = load_file(out / "pytorch_lora_weights.safetensors")
    assert all("lora_" in k for k in state), [k for k in state if "lora_" not in k]
    assert any(k.startswith("text_encoder.") for k in state)
    kohya = load_file(out / "run.safetensors")
    assert any(k.startswith("lora_te_") for k in kohya) and "bundle_emb.<sks>.string_to_param.*" in kohya
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model))
    pipe.load_lora_weights(str(out))  # stock diffusers: LoRA layers only, nothing unexpected
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder"}
    exported = tmp_path / "exported.safetensors"
    assert main(["export", "--lora", str(out / "pytorch_lora_weights.safetensors"), str(exported)]) == 0
    assert set(load_file(exported)) == set(kohya)


def test_a_file_that_cannot_be_written_at_the_end_loses_nothing_else(make_cfg, monkeypatch, capsys):
    """Issue 18.3: a failure at the final save kept run.json at "training" and left no weights. Now the
    other files are written, run.json says finished and what is missing, and the command exits 1."""
    import dreambooth.formats.kohya

    def broken(*args, **kwargs):
        raise ValueError("disk says no")

    monkeypatch.setattr(dreambooth.formats.kohya, "write_kohya", broken)
    cfg = make_cfg(train_identifier_embedding=True, max_steps=2, save_format="both")
    args = ["train", "--model", cfg.model, "--instance-dir", cfg.instance_dir, "--instance-prompt", cfg.instance_prompt,
            "--output-dir", cfg.output_dir, "--resolution", "64", "--max-steps", "2", "--rank", "4",
            "--train-identifier-embedding", "--save-format", "both", "--lr-scheduler", "constant"]  # fmt: skip
    assert main(args) == 1
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "could not write run.safetensors (kohya's layout): disk says no" in err and "step-2" in err
    out = tmp_path_of(cfg)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "finished" and status["files"] == [
        "pytorch_lora_weights.safetensors",
        "learned_embeds.safetensors",
    ]
    assert status["unsaved"] == ["run.safetensors (kohya's layout): disk says no"]
    last = out / "checkpoints" / "step-2"
    assert (last / "checkpoint_complete").is_file() and (last / "trainable.safetensors").is_file()
    assert json.loads((last / "state.json").read_text())["unsaved"] == status["unsaved"]
    assert (out / "README.md").is_file()


def tmp_path_of(cfg):
    from pathlib import Path

    return Path(cfg.output_dir)
