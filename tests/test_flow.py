"""The flow-matching transformer families (issue 20): SD3 and FLUX.1 train, save, load and generate
through the same code as the UNet families, and what they compute is what diffusers' own pipelines and
DreamBooth scripts compute (re-implemented here from those scripts, not taken from our code)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from dreambooth.cli import main
from dreambooth.families import FAMILIES, family_of_lora
from dreambooth.families.objectives import RectifiedFlow
from dreambooth.models import family_of, load_components, native_size, size_step
from dreambooth.training.loop import train
from helpers import lora_weights, max_abs_diff


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    for arch in ("sd3", "flux", "flux-schnell"):
        assert main(["tiny-model", str(root / arch), "--arch", arch]) == 0
    return root


def test_sd3_and_flux_are_recognised_and_sized_from_their_configs(flow_models):
    assert [family_of(str(flow_models / a)).name for a in ("sd3", "flux", "flux-schnell")] == ["sd3", "flux", "flux"]
    for arch in ("sd3", "flux"):
        assert size_step(str(flow_models / arch)) == 16  # VAE x8, then patch 2 (SD3) or 2x2 packing (FLUX)
    assert native_size(str(flow_models / "sd3")) == 64  # sample_size 8 x VAE factor 8
    assert native_size(str(flow_models / "flux")) == 64  # FLUX's transformer has no sample size: the VAE's
    sd3, flux = FAMILIES["sd3"], FAMILIES["flux"]
    assert sd3.trainable_text_encoders == ("text_encoder", "text_encoder_2") and sd3.denoiser == "transformer"
    assert flux.trainable_text_encoders == ("text_encoder",)


def _script_flow(sched, scheme, latents, noise, g):
    """diffusers' train_dreambooth_lora_{sd3,flux}.py, step by step: timesteps from the density, sigmas by
    looking each timestep up in the schedule, the interpolation, the target and the loss weighting."""
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    b = latents.shape[0]
    u = compute_density_for_timestep_sampling(
        weighting_scheme=scheme, batch_size=b, logit_mean=0.0, logit_std=1.0, mode_scale=1.29, generator=g
    )
    indices = (u * sched.config.num_train_timesteps).long()
    timesteps = sched.timesteps[indices]
    step_indices = [(sched.timesteps == t).nonzero().item() for t in timesteps]
    sigma = sched.sigmas[step_indices].flatten()
    while len(sigma.shape) < latents.ndim:
        sigma = sigma.unsqueeze(-1)
    noisy = (1.0 - sigma) * latents + sigma * noise
    return timesteps, noisy, noise - latents, compute_loss_weighting_for_sd3(scheme, sigma)


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"])
def test_rectified_flow_is_what_diffusers_scripts_train(flow_models, scheme):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dreambooth.training.losses import prior_preservation_loss

    for arch in ("sd3", "flux"):
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(flow_models / arch, subfolder="scheduler")
        latents, noise, pred = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
        t, noisy, target, weighting = _script_flow(sched, scheme, latents, noise, torch.Generator().manual_seed(3))
        ours = RectifiedFlow(FAMILIES[arch].training_scheduler(sched.config), scheme)
        t2 = ours.timesteps(4, torch.Generator().manual_seed(3))
        assert torch.equal(t, t2)
        assert torch.allclose(ours.noisy(latents, noise, t2), noisy, atol=1e-6)
        assert torch.equal(ours.target(latents, noise, t2), target)
        script_loss = torch.mean((weighting.float() * (pred - target) ** 2).reshape(4, -1), 1).mean()
        w = ours.weights(t2)
        loss, _, _ = prior_preservation_loss(pred, ours.target(latents, noise, t2), 4, 0.0, w)
        assert torch.allclose(loss, script_loss, rtol=1e-5)
    if scheme == "none":  # FLUX's schedule is unshifted at training time (its shift is resolution-dependent)
        assert math.isclose(float(sched.sigmas[0]), 1.0) and sched.config.use_dynamic_shifting


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_prompts_encode_as_the_pipelines_encode_them(flow_models, arch):
    comps = load_components(str(flow_models / arch))
    family, prompt = comps.family, "a photo of sks dog on the beach"
    ids = family.token_ids(comps.tokenizers, prompt, 77)
    with torch.no_grad():
        emb, pooled = family.encode_prompt(comps.text_encoders, ids, "cpu")
        if arch == "sd3":
            ref, _, ref_pooled, _ = comps.pipeline.encode_prompt(
                prompt, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=77
            )
        else:
            ref, ref_pooled, _ = comps.pipeline.encode_prompt(prompt, None, device="cpu", max_sequence_length=77)
    assert emb.shape == ref.shape and torch.allclose(emb, ref, atol=1e-6)
    assert torch.allclose(pooled, ref_pooled, atol=1e-6)


def test_flux_packs_latents_and_embeds_guidance_as_the_pipeline_does(flow_models):
    from diffusers import FluxPipeline

    comps = load_components(str(flow_models / "flux"))
    tr, b, c, h, w = comps.denoiser, 2, 4, 8, 6
    noisy, emb, pooled = torch.randn(b, c, h, w), torch.randn(b, 7, 96), torch.randn(b, 32)
    t = torch.tensor([250.0, 900.0])
    with torch.no_grad():
        ours = comps.family.predict(tr, noisy, t, emb, {"pooled_projections": pooled}, None)
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        ref = tr(
            hidden_states=packed,
            timestep=t / 1000,
            guidance=torch.full((b,), 3.5),
            pooled_projections=pooled,
            encoder_hidden_states=emb,
            txt_ids=torch.zeros(7, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
        ).sample
        ref = FluxPipeline._unpack_latents(ref, h * 8, w * 8, 8)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_lora_dreambooth_trains_and_loads_in_stock_diffusers_to_the_same_images(flow_models, tmp_path, arch):
    """Text-encoder LoRA on the CLIP encoders (T5 frozen), prior preservation with class images from the
    same base model; the file loads unchanged in the family's pipeline, every tensor of it, and our
    generate draws what the stock pipeline draws."""
    import diffusers

    from dreambooth.demo import example_subject

    model, run, out = flow_models / arch, tmp_path / "run", tmp_path / "images"
    args = ["train", "--model", str(model), "--instance-dir", str(example_subject()),
            "--instance-prompt", "a photo of sks dog", "--output-dir", str(run), "--resolution", "64",
            "--max-steps", "3", "--rank", "4", "--learning-rate", "1e-2", "--lr-scheduler", "constant",
            "--train-text-encoder", "--text-encoder-lr", "1e-2", "--class-prompt", "a photo of a dog",
            "--class-dir", str(tmp_path / "class"), "--num-class-images", "2", "--class-inference-steps", "2",
            "--max-sequence-length", "16"]  # fmt: skip
    assert main(args) == 0
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    state = lora_weights(run)
    assert {k.split(".")[0] for k in state} == {"transformer", *FAMILIES[arch].trainable_text_encoders}
    pipe = getattr(diffusers, FAMILIES[arch].pipeline).from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(run)
    from peft.utils import get_peft_model_state_dict

    loaded = {
        f"transformer.{k}": v for k, v in get_peft_model_state_dict(pipe.transformer, adapter_name="default_0").items()
    }
    for name in FAMILIES[arch].trainable_text_encoders:
        te = get_peft_model_state_dict(getattr(pipe, name), adapter_name="default_0")
        loaded.update({f"{name}.{k}": v for k, v in te.items()})
    ours = {k.replace("text_model.", "") if not k.startswith("transformer") else k: v for k, v in state.items()}
    loaded = {k.replace("text_model.", "") if not k.startswith("transformer") else k: v for k, v in loaded.items()}
    assert set(loaded) == set(ours) and max_abs_diff(loaded, ours) == 0
    ref = pipe("a photo of sks dog", num_inference_steps=3, height=64, width=64, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(5), output_type="np", max_sequence_length=16).images[0]  # fmt: skip
    assert main(["generate", "--model", str(model), "--lora", str(run), "--prompt", "a photo of sks dog",
                 "--num-images", "1", "--seed", "5", "--steps", "3", "--guidance", "4", "--width", "64",
                 "--height", "64", "--output-dir", str(out), "--no-fuse", "--max-sequence-length", "16"]) == 0  # fmt: skip
    from PIL import Image

    ours_image = np.asarray(Image.open(next(out.glob("*.png"))), dtype=np.float32) / 255
    assert np.abs(ours_image - ref).max() <= 1 / 255 + 1e-6


def test_stop_and_resume_on_flux_equals_an_uninterrupted_run(flow_models, tmp_path, make_cfg):
    kw = dict(model=str(flow_models / "flux"), max_steps=4, checkpoint_every=2, train_text_encoder=True,
              text_encoder_lr=1e-3, random_flip=True, max_sequence_length=16, weighting_scheme="logit_normal")  # fmt: skip
    straight = train(make_cfg(output_dir=str(tmp_path / "straight"), **kw), progress=False)
    half = train(make_cfg(output_dir=str(tmp_path / "resumed"), **{**kw, "max_steps": 2}), progress=False)
    resumed = train(make_cfg(output_dir=str(half), resume="latest", **kw), progress=False)
    assert max_abs_diff(lora_weights(straight), lora_weights(resumed)) <= 1e-6
    cached = lora_weights(straight)
    uncached = lora_weights(train(make_cfg(output_dir=str(tmp_path / "uncached"), no_cache=True, **kw), progress=False))
    assert max_abs_diff(cached, uncached) < 1e-5  # caching changes where encoders run, not what trains
    assert family_of_lora(cached).name == "flux"


@pytest.mark.parametrize(
    "arch,flags,named",
    [
        ("flux", ["--snr-gamma", "5"], "--snr-gamma"),
        ("sd3", ["--zero-terminal-snr"], "--zero-terminal-snr"),
        ("sd3", ["--guidance-scale", "3.5"], "--guidance-scale"),
        ("flux-schnell", ["--guidance-scale", "3.5"], "--guidance-scale"),
        ("flux", ["--text-encoder-2-lr", "1e-4"], "--text-encoder-2-lr"),
        ("flux", ["--use-dora", "--save-format", "both"], "--save-format"),
        ("sd3", ["--method", "textual-inversion", "--token", "<zq>", "--initializer-token", "dog"], "--method"),
        (None, ["--weighting-scheme", "logit_normal"], "--weighting-scheme"),
        (None, ["--max-sequence-length", "77"], "--max-sequence-length"),
        ("flux", ["--method", "full", "--quantize-base", "int8"], "--quantize-base"),
        pytest.param(
            "flux",
            ["--quantize-base", "nf4"],
            "--quantize-base",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="nf4 runs where CUDA is"),
        ),  # fmt: skip
    ],
)
def test_what_a_family_cannot_honour_is_one_line(flow_models, tiny_model, tmp_path, capsys, arch, flags, named):
    from dreambooth.demo import example_subject

    model = flow_models / arch if arch else tiny_model
    args = ["train", "--model", str(model), "--instance-dir", str(example_subject()), "--instance-prompt",
            "a photo of sks dog", "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
            "--resolution", "64", "--lr-scheduler", "constant", *flags]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {named}")
    assert not (tmp_path / "run").exists()


def test_int8_quantised_base_trains_a_lora_that_loads_and_generates_and_never_changes(flow_models, tmp_path,
                                                                                       make_cfg, monkeypatch):  # fmt: skip
    """--quantize-base int8 (torchao weight-only): the transformer and T5 are int8 while the LoRA trains in
    fp32; the int8 weights after training are those loaded; the LoRA loads in stock diffusers on the
    unquantised base and our generate draws with it."""
    import dreambooth.training.setup as setup_module

    seen = {}
    real = setup_module.load_components

    def keep(*a, **k):
        seen["comps"] = real(*a, **k)
        return seen["comps"]

    monkeypatch.setattr(setup_module, "load_components", keep)
    model = flow_models / "flux"
    run = train(make_cfg(model=str(model), max_steps=3, quantize_base="int8", max_sequence_length=16,
                         learning_rate=1e-2), progress=False)  # fmt: skip
    comps = seen["comps"]
    q = comps.denoiser.transformer_blocks[0].attn.to_q.base_layer.weight
    t5 = comps.parts["text_encoder_2"].encoder.block[0].layer[0].SelfAttention.q.weight
    assert "Int8" in type(q).__name__ and "Int8" in type(t5).__name__
    assert all(p.dtype == torch.float32 for p in comps.parts["text_encoder"].parameters())  # CLIP: not quantised
    fresh = load_components(str(model), quantize="int8")
    assert torch.equal(q.dequantize(), fresh.denoiser.transformer_blocks[0].attn.to_q.weight.dequantize())
    lora = comps.denoiser.transformer_blocks[0].attn.to_q.lora_B["default"].weight
    assert lora.dtype == torch.float32 and lora.abs().max() > 0
    out = tmp_path / "images"
    assert main(["generate", "--model", str(model), "--lora", str(run), "--prompt", "a photo of sks dog",
                 "--num-images", "1", "--steps", "2", "--width", "64", "--height", "64",
                 "--max-sequence-length", "16", "--output-dir", str(out)]) == 0  # fmt: skip
    assert len(list(out.glob("*.png"))) == 1


def _kohya_file(state: dict) -> dict:
    return {f"lora_unet_{n}.{part}": t for n, (d, u, a) in state.items()
            for part, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))}  # fmt: skip


def test_kohya_flux_layout_is_what_diffusers_converter_reads_at_flux1_widths():
    """At FLUX.1 [dev]'s real widths (3072, 19 double and 38 single blocks; rank-2 LoRAs keep it small),
    diffusers' own kohya-FLUX converter reads our fused file back to the same LoRA products."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from dreambooth.families.fused import from_fused, to_fused

    groups = FAMILIES["flux"].kohya_groups

    config, h = dict(num_attention_heads=24, attention_head_dim=128, num_layers=19, num_single_layers=38), 3072
    torch.manual_seed(0)
    paths = [f"transformer_blocks.18.attn.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
             "add_k_proj", "add_v_proj", "to_add_out")] + [f"single_transformer_blocks.37.attn.{m}"
             for m in ("to_q", "to_k", "to_v")] + ["single_transformer_blocks.37.proj_out"]  # fmt: skip
    ours = {p: (torch.randn(2, h if "proj_out" not in p else 5 * h), torch.randn(h, 2), 8.0) for p in paths}
    kohya = to_fused(ours, groups(config), "FLUX.1")
    assert set(kohya) == {"double_blocks_18_img_attn_qkv", "double_blocks_18_img_attn_proj",
                          "double_blocks_18_txt_attn_qkv", "double_blocks_18_txt_attn_proj",
                          "single_blocks_37_linear1", "single_blocks_37_linear2"}  # fmt: skip
    theirs = _convert_kohya_flux_lora_to_diffusers(_kohya_file(kohya))
    back = from_fused(kohya, groups(config), "FLUX.1")
    for p, (down, up, alpha) in ours.items():
        want = (alpha / 2) * up @ down
        got = theirs[f"transformer.{p}.lora_B.weight"] @ theirs[f"transformer.{p}.lora_A.weight"]
        assert torch.allclose(got, want, atol=1e-4), p
        d, u, a = back[p]
        assert torch.allclose((a / d.shape[0]) * u @ d, want, atol=1e-4), p
    mlp = theirs["transformer.single_transformer_blocks.37.proj_mlp.lora_B.weight"]
    assert not mlp.any()  # the fused MLP part had no LoRA: a zero block


def test_flux_lora_in_kohyas_layout_merges_as_comfyui_merges_it_and_round_trips(flow_models, tmp_path):
    """The kohya file of a FLUX run: ComfyUI adds (alpha / rank) up @ down to the original model's fused
    weights (double_blocks.N.img_attn.qkv = [to_q; to_k; to_v], single_blocks.N.linear1 = [to_q; to_k;
    to_v; proj_mlp]), which equals stock diffusers' fused weights; exported back to diffusers' layout, and
    given to generate as it is, it draws the run's images."""
    import diffusers
    from safetensors.torch import load_file

    from dreambooth.demo import example_subject

    model, run = flow_models / "flux", tmp_path / "run"
    assert main(["train", "--model", str(model), "--instance-dir", str(example_subject()), "--instance-prompt",
                 "a photo of sks dog", "--output-dir", str(run), "--resolution", "64", "--max-steps", "2",
                 "--rank", "4", "--lora-alpha", "8", "--learning-rate", "5e-2", "--lora-targets", "attn,ff",
                 "--train-text-encoder", "--max-sequence-length", "16", "--save-format", "both",
                 "--lr-scheduler", "constant"]) == 0  # fmt: skip
    kohya = load_file(run / "run.safetensors")
    assert "lora_unet_single_blocks_1_linear1.lora_down.weight" in kohya
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn") for k in kohya)
    base = diffusers.FluxTransformer2DModel.from_pretrained(model, subfolder="transformer").state_dict()
    pipe = diffusers.FluxPipeline.from_pretrained(model)
    pipe.load_lora_weights(run)
    pipe.fuse_lora(components=["transformer"])
    tuned = pipe.transformer.state_dict()

    def w(sd, path):
        return sd.get(f"{path}.base_layer.weight", sd.get(f"{path}.weight"))

    def comfy(name, rows):  # ComfyUI's merge of one kohya key onto the original fused weight
        fused = torch.cat([w(base, p) for p in rows])
        d, u = kohya[f"lora_unet_{name}.lora_down.weight"], kohya[f"lora_unet_{name}.lora_up.weight"]
        return fused + (float(kohya[f"lora_unet_{name}.alpha"]) / d.shape[0]) * u @ d

    qkv = [f"transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v")]
    linear1 = [f"single_transformer_blocks.1.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    for name, rows in (("double_blocks_0_img_attn_qkv", qkv), ("single_blocks_1_linear1", linear1),
                       ("double_blocks_0_txt_mlp_0", ["transformer_blocks.0.ff_context.net.0.proj"])):  # fmt: skip
        merged = comfy(name, rows)
        assert not torch.allclose(merged, torch.cat([w(base, p) for p in rows]))
        assert torch.allclose(merged, torch.cat([w(tuned, p) for p in rows]), atol=1e-5), name

    back = tmp_path / "back.safetensors"
    assert main(["export", "--lora", str(run / "run.safetensors"), "--format", "diffusers", str(back),
                 "--model", str(model)]) == 0  # fmt: skip

    def image(lora, out):
        assert main(["generate", "--model", str(model), "--lora", str(lora), "--prompt", "a photo of sks dog",
                     "--num-images", "1", "--steps", "2", "--width", "64", "--height", "64",
                     "--max-sequence-length", "16", "--output-dir", str(tmp_path / out)]) == 0  # fmt: skip
        from PIL import Image

        return np.asarray(Image.open(next((tmp_path / out).glob("*.png"))), dtype=np.float32)

    ours = image(run, "a")
    assert np.abs(image(back, "b") - ours).max() <= 1.0
    assert np.abs(image(run / "run.safetensors", "c") - ours).max() <= 1.0


def test_sd3_lora_in_kohyas_layout_loads_in_comfyuis_model_as_stock_diffusers_fuses_it(flow_models, tmp_path):
    """The kohya file of an SD 3.5-layout run (LoRA on attention, the second attention and feed-forward,
    both CLIP encoders): every key is one ComfyUI's SD3 model loads (joint_blocks.N.x_block.attn.qkv ...,
    lora_te1_/lora_te2_), and merged onto ComfyUI's weights it gives what stock diffusers' fused
    pipeline has, mapped to ComfyUI's layout (tests/consumers.py); read back, it draws the run's images."""
    import diffusers
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import load_file

    from consumers import comfyui_clip_weights, comfyui_load_lora, comfyui_mmdit_weights
    from dreambooth.demo import example_subject

    model, run = flow_models / "sd3", tmp_path / "run"
    assert main(["train", "--model", str(model), "--instance-dir", str(example_subject()), "--instance-prompt",
                 "a photo of sks dog", "--output-dir", str(run), "--max-steps", "2", "--rank", "4",
                 "--lora-alpha", "8", "--learning-rate", "5e-2", "--lora-targets", "attn,ff",
                 "--train-text-encoder", "--max-sequence-length", "16", "--save-format", "both",
                 "--lr-scheduler", "constant"]) == 0  # fmt: skip
    kohya = load_file(run / "run.safetensors")
    for name in ("joint_blocks_0_x_block_attn_qkv", "joint_blocks_0_x_block_attn2_qkv",
                 "joint_blocks_1_context_block_attn_qkv", "joint_blocks_0_context_block_mlp_fc2"):  # fmt: skip
        assert f"lora_unet_{name}.lora_down.weight" in kohya, name
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn") for k in kohya)
    with safe_open(str(run / "run.safetensors"), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "5-medium"  # sd-scripts' name for SD 3.5 Medium

    def comfy_weights(pipe):
        return {**comfyui_mmdit_weights(pipe.transformer.state_dict(), 2),
                **comfyui_clip_weights(pipe.text_encoder.state_dict(), pipe.text_encoder_2.state_dict())}  # fmt: skip

    base = comfy_weights(diffusers.StableDiffusion3Pipeline.from_pretrained(model))
    merged, missed = comfyui_load_lora(base, kohya)
    assert missed == []
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(model)
    pipe.load_lora_weights(run)
    pipe.fuse_lora(components=["transformer", "text_encoder", "text_encoder_2"])
    tuned = comfy_weights(pipe)
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert len(changed) == sum(k.endswith(".lora_down.weight") for k in kohya)
    for k in base:
        assert torch.allclose(merged[k], tuned[k], atol=1e-5), k

    back = tmp_path / "back.safetensors"
    assert main(["export", "--lora", str(run / "run.safetensors"), "--format", "diffusers", str(back),
                 "--model", str(model)]) == 0  # fmt: skip

    def image(lora, out):
        assert main(["generate", "--model", str(model), "--lora", str(lora), "--prompt", "a photo of sks dog",
                     "--num-images", "1", "--steps", "2", "--max-sequence-length", "16",
                     "--output-dir", str(tmp_path / out)]) == 0  # fmt: skip
        return np.asarray(Image.open(next((tmp_path / out).glob("*.png"))), dtype=np.float32)

    ours = image(run, "a")
    assert np.abs(image(back, "b") - ours).max() <= 1.0
    assert np.abs(image(run / "run.safetensors", "c") - ours).max() <= 1.0


def test_a_single_file_of_the_sd3_transformer_alone_loads_with_the_rest_from_its_model_config(flow_models, tmp_path):
    """SD3 and FLUX files are mostly shared as the transformer alone, in the original layout
    (model.diffusion_model.joint_blocks...). With --model-config naming the base model, diffusers reads
    the transformer and (unlike stock from_single_file, which looks for diffusers' weight names only) the
    text encoders and VAE come from the folder: same weights, same image as the folder."""
    import diffusers
    from PIL import Image
    from safetensors.torch import save_file

    from consumers import comfyui_mmdit_weights

    folder = flow_models / "sd3"
    state = diffusers.SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer").state_dict()
    original = comfyui_mmdit_weights(state, 2, ends=("weight", "bias"))
    path = tmp_path / "sd35-finetune.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in original.items()}, str(path))
    images = []
    for name, model in (("folder", [str(folder)]), ("file", [str(path), "--model-config", str(folder)])):
        assert main(["generate", "--model", *model, "--prompt", "a photo of a dog", "--steps", "2",
                     "--num-images", "1", "--max-sequence-length", "16", "--output-dir", str(tmp_path / name)]) == 0  # fmt: skip
        images.append(np.asarray(Image.open(next((tmp_path / name).glob("*.png"))), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1
    loaded = load_components(str(path)).denoiser.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("guidance,repo", [(True, "FLUX.1-dev"), (False, "FLUX.1-schnell")])
def test_a_flux_single_file_is_recognised_by_its_keys(flow_models, tmp_path, capsys, guidance, repo):
    """A FLUX.1 file (BFL's names: double_blocks..., guidance_in only in [dev]) is recognised as FLUX and
    its configs are looked for where diffusers infers them; offline and without --model-config that is
    the one line that says so (not "unsupported")."""
    from safetensors.torch import save_file

    keys = {"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(8), "img_in.weight": torch.zeros(32, 16),
            **({"guidance_in.in_layer.bias": torch.zeros(32)} if guidance else {})}  # fmt: skip
    path = tmp_path / "flux.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in keys.items()}, str(path))
    assert main(["generate", "--model", str(path), "--prompt", "a dog", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"black-forest-labs/{repo}" in err[0] and "--model-config" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_grid_evaluate_select_and_the_model_card_take_a_flow_model(flow_models, make_cfg, extractors, tmp_path, arch):
    import json

    model = flow_models / arch
    run = train(make_cfg(model=str(model), max_steps=2, checkpoint_every=1, max_sequence_length=16), progress=False)
    card = (run / "README.md").read_text()
    pipeline = FAMILIES[arch].pipeline
    assert f"from diffusers import {pipeline}" in card and f'{pipeline}.from_pretrained("{model}")' in card
    grid = ["grid", "--model", str(model), "--lora", str(run), "--prompt", "a photo of sks dog", "--steps", "2",
            "--x", "lora-scale-unet=0,1", "--output-dir", str(tmp_path / "grid"), "--max-sequence-length", "16"]  # fmt: skip
    assert main(grid) == 0 and len(list((tmp_path / "grid" / "cells").glob("*.png"))) == 2
    dino, clip = extractors
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        from PIL import Image

        Image.new("RGB", (64, 64), (40 * i, 120, 200)).save(photos / f"{i}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {identifier} {class}\n")
    ev = ["evaluate", "--model", str(model), "--lora", str(run), "--real", str(photos), "--class-noun", "dog",
          "--prompts", str(prompts), "--images-per-prompt", "2", "--num-class-images", "2", "--steps", "2",
          "--dino-model", str(dino), "--clip-model", str(clip), "--output-dir", str(tmp_path / "ev")]  # fmt: skip
    assert main(ev) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_generated"] == 2 and 0 <= metrics["dino"] <= 1
    select = ["select", "--run", str(run), "--dino-model", str(dino), "--clip-model", str(clip), "--prompts", "1",
              "--images-per-prompt", "1", "--num-class-images", "0", "--steps", "2"]  # fmt: skip
    assert main(select) == 0
    selection = json.loads((run / "selection.json").read_text())
    assert [c["step"] for c in selection["candidates"]] == [1, 2]


def test_sweep_trains_and_scores_a_flow_model(flow_models, extractors, tmp_path):
    """`sweep --evaluate` on FLUX: one run per value of [dev]'s embedded training guidance, each scored
    with the paper's metrics on images the family's pipeline draws (at --width/--height, not FLUX's
    native 1024 px), and one recommended. (select, which scores each run, is tested on SD3 too.)"""
    arch, vary = "flux", "guidance-scale=1,3.5"
    import json

    import yaml

    from dreambooth.demo import example_subject

    dino, clip = extractors
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(dict(model=str(flow_models / arch), instance_dir=str(example_subject()),
                                        instance_prompt="a photo of sks dog", resolution=64, max_steps=2, rank=4,
                                        checkpoint_every=2, lr_scheduler="constant", max_sequence_length=16)))  # fmt: skip
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(base), "--output-dir", str(out), "--vary", vary, "--evaluate",
                 "--dino-model", str(dino), "--clip-model", str(clip), "--prompts", "2", "--images-per-prompt",
                 "1", "--num-class-images", "2", "--steps", "2", "--width", "64", "--height", "64"]) == 0  # fmt: skip
    report = json.loads((out / "sweep.json").read_text())
    key, values = vary.split("=")
    assert len(report["candidates"]) == 2 and all(r["dino"] is not None for r in report["candidates"])
    runs = {r["run"] for r in report["runs"]}
    assert runs == {f"{key}-{v}" for v in values.split(",")}, runs
    assert report["recommended"]["run"] in runs


def test_the_web_ui_trains_generates_and_reads_back_on_a_flow_model(flow_models, tmp_path):
    """The UI's logic (no browser) on SD3: the train form's run trains as its own process, the generate
    form draws with its LoRA and the family's sampler ("(the model's)"), and a PNG brings its run and
    settings back to the form."""
    import time

    from PIL import Image

    from dreambooth.demo import example_subject
    from dreambooth.ui.backend import MODEL_SAMPLER, Backend
    from dreambooth.ui.projects import Projects, TrainForm, view, write_train_config
    from dreambooth.ui.supervisor import Supervisor

    (tmp_path / "projects").mkdir()
    projects, model = Projects(tmp_path / "projects"), str(flow_models / "sd3")
    photos = sorted(p for p in example_subject().iterdir() if p.suffix == ".jpg")[:2]
    form = TrainForm(name="sd3-dog", identifier="sks", class_noun="dog", method="lora", max_steps=2,
                     learning_rate=1e-3, prior=False, resolution=64, checkpoint_every=2)  # fmt: skip
    run = write_train_config(projects, form, model, photos).parent
    sup = Supervisor()
    sup.start(run)
    deadline = time.monotonic() + 180
    while sup.state(run) not in ("finished", "stopped") and not str(sup.state(run)).startswith("failed"):
        assert time.monotonic() < deadline, sup.state(run)
        time.sleep(0.2)
    assert sup.state(run) == "finished", (run / "train.log").read_text()[-2000:]
    assert view(run, "finished").step == 2

    backend = Backend(projects, model, sup)
    gen = dict(prompt="a photo of sks dog", model=model, run="sd3-dog", checkpoint="final", seed=0, num_images=1,
               lora_scale_unet=1, lora_scale_text_encoder=1, guidance=5, steps=2, scheduler=MODEL_SAMPLER)  # fmt: skip
    (record,) = backend.generate(gen)
    assert record["settings"]["scheduler"] == "euler" and record["settings"]["lora"]
    assert Image.open(record["path"]).size == (64, 64)
    back, note = backend.form_of_png(record["path"])
    assert note == "" and back["run"] == "sd3-dog" and back["checkpoint"] == "final" and back["model"] == model


def test_compare_leaves_out_what_the_family_cannot_train_and_refuses_it_by_name(flow_models, tmp_path, capsys):
    from dreambooth.compare import methods_for
    from dreambooth.config import CompareConfig

    flux = str(flow_models / "flux")
    assert methods_for(CompareConfig(subjects=["x"], model=flux)) == ["lora", "full"]
    args = ["compare", "--subjects", str(tmp_path), "--model", flux, "--methods", "lora,textual-inversion",
            "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "textual-inversion" in err[0] and "FLUX.1" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags,named",
    [(["--max-sequence-length", "16"], "--max-sequence-length"), (["--scheduler", "heun"], "--scheduler heun")],
)
def test_generate_refuses_what_the_models_family_cannot_do_in_one_line(tiny_model, tmp_path, capsys, flags, named):
    args = ["generate", "--model", str(tiny_model), "--prompt", "a photo of a dog", "--num-images", "1",
            "--steps", "1", "--output-dir", str(tmp_path / "out"), *flags]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {named}") and "Stable Diffusion 1.x" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_bf16_mixed_precision_generates_class_and_validation_images(flow_models, make_cfg, tmp_path, arch):
    """How these models train on a GPU: --mixed-precision bf16 with the VAE kept in fp32 (the family's
    upcast); the class images and validation images the bf16 transformer draws decode (FLUX's pipeline
    hands its latents to the VAE uncast)."""
    cfg = make_cfg(model=str(flow_models / arch), mixed_precision="bf16", class_prompt="a photo of a dog",
                   class_dir=str(tmp_path / "class"), num_class_images=2, class_inference_steps=2,
                   validation_prompt=["a photo of sks dog"], validation_inference_steps=2,
                   max_sequence_length=16, validation_loss_every=2)  # fmt: skip
    run = train(cfg, progress=False)
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    assert list((run / "validation").rglob("*.png"))
    last = (run / "train_log.csv").read_text().splitlines()[-1].split(",")
    assert float(last[-2]) > 0 and float(last[-1]) > 0  # the validation loss, on the photos and class images


def test_generation_without_guidance_uses_the_familys_own(flow_models, tiny_model, tmp_path):
    """FluxPipeline's 3.5 ([dev]'s embedded guidance), StableDiffusion3Pipeline's 7.0, the UNets' 7.5;
    recorded as such in the image."""
    from dreambooth.formats.pnginfo import settings_from_image

    for model, expected in ((flow_models / "flux", 3.5), (flow_models / "sd3", 7.0), (tiny_model, 7.5)):
        out = tmp_path / model.name
        assert main(["generate", "--model", str(model), "--prompt", "a dog", "--num-images", "1", "--steps", "1",
                     "--width", "64", "--height", "64", "--output-dir", str(out)]) == 0  # fmt: skip
        assert settings_from_image(str(next(out.glob("*.png"))))["guidance"] == expected, model


def test_flux_without_embedded_guidance_is_guided_as_fluxpipelines_true_cfg_and_t5_length_follows_its_tokenizer(
    flow_models, tmp_path
):
    """[schnell]'s layout (and the toy world's twin) has no guidance input: --guidance there is true
    classifier-free guidance (FluxPipeline's true_cfg_scale, against an empty negative prompt), off by
    default as in FluxPipeline; a T5 tokenizer shorter than the family's 512 sets the prompt length."""
    import json
    import shutil

    import diffusers

    from dreambooth.config import TrainConfig
    from dreambooth.models import default_guidance
    from dreambooth.training.setup import resolved

    model = tmp_path / "schnell"
    shutil.copytree(flow_models / "flux-schnell", model)
    config = model / "tokenizer_2" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 24}))
    assert default_guidance(str(model)) == 1.0 and default_guidance(str(flow_models / "flux")) == 3.5
    cfg = TrainConfig(model=str(model), instance_dir="x", instance_prompt="a photo of sks dog", output_dir="o")
    assert resolved(cfg).max_sequence_length == 24
    assert resolved(dataclasses.replace(cfg, model=str(flow_models / "flux"))).max_sequence_length == 512
    # class and validation images are guided as generation is by default: diffusers' scripts call the pipeline
    # with its own default (FluxPipeline: [dev]'s 3.5 embedded, no true CFG; SD3's 7.0)
    for name, expected in ((model, 1.0), (flow_models / "flux", 3.5), (flow_models / "sd3", 7.0)):
        r = resolved(dataclasses.replace(cfg, model=str(name)))
        assert (r.class_guidance, r.validation_guidance) == (expected, expected), name
    r = resolved(dataclasses.replace(cfg, class_guidance=4.0, validation_guidance=2.0))
    assert (r.class_guidance, r.validation_guidance) == (4.0, 2.0)

    pipe = diffusers.FluxPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    stock = dict(num_inference_steps=3, height=64, width=64, output_type="np", max_sequence_length=24)
    from PIL import Image

    for guidance, extra in ((None, {}), ("4", {"true_cfg_scale": 4.0, "negative_prompt": ""})):
        out = tmp_path / f"g{guidance}"
        args = ["generate", "--model", str(model), "--prompt", "a photo of a dog", "--num-images", "1", "--seed", "5",
                "--steps", "3", "--width", "64", "--height", "64", "--output-dir", str(out)]  # fmt: skip
        assert main([*args, *(["--guidance", guidance] if guidance else [])]) == 0
        ref = pipe("a photo of a dog", generator=torch.Generator().manual_seed(5), **stock, **extra).images[0]
        ours = np.asarray(Image.open(next(out.glob("*.png"))), dtype=np.float32) / 255
        assert np.abs(ours - ref).max() <= 1 / 255 + 1e-6, guidance
    unguided = np.asarray(Image.open(next((tmp_path / "gNone").glob("*.png"))), dtype=np.float32)
    guided = np.asarray(Image.open(next((tmp_path / "g4").glob("*.png"))), dtype=np.float32)
    assert np.abs(unguided - guided).max() > 10  # guidance acted


def test_the_web_ui_starts_at_the_models_own_guidance(flow_models, tiny_model):
    from dreambooth.ui.tab_generate import _guidance_default

    found = [_guidance_default(str(flow_models / a)) for a in ("flux", "flux-schnell", "sd3")]
    assert found == [3.5, 1.0, 7.0] and _guidance_default(str(tiny_model)) == 7.5 and _guidance_default(None) == 7.5
