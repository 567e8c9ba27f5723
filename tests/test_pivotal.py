"""Pivotal tuning (issue 11): the identifier's embedding learned with the LoRA, in one run."""

from __future__ import annotations

import json

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.data.examples import tokenize
from dreambooth.training.loop import fit, resolved, setup, train
from dreambooth.training.preflight import preflight


def test_the_identifier_becomes_a_learned_token_and_nothing_else_in_the_embedding_moves(make_cfg):
    cfg = resolved(make_cfg(train_identifier_embedding=True, identifier_lr=1e-2, max_steps=3))
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
    # the kohya file's bundled embedding is for AUTOMATIC1111; here it is refused with a pointer
    assert main([*args, "--lora", str(kohya), "--output-dir", str(tmp_path / "g2")]) == 2
