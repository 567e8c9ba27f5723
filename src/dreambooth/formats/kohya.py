"""LoRA files in the layout kohya's sd-scripts write and AUTOMATIC1111, ComfyUI and LyCORIS load.

Our runs write diffusers' format (`unet.<module>.lora_A.weight`, peft's config in the metadata). The
kohya layout names each module with underscores under a prefix and stores the scale as a tensor:

    lora_unet_<module_path>.lora_down.weight / .lora_up.weight / .alpha
    lora_te_<module_path> ...                  (SD 1.x / 2.x text encoder)
    lora_te1_ ... / lora_te2_ ...              (SDXL's two text encoders)

SD 1.x/2.x modules keep diffusers' UNet names (kohya trains those on a diffusers-layout UNet); SDXL's
use the SGM/LDM block names (input_blocks.4.1...) of the UNet kohya trains SDXL on. `.alpha` is the
run's lora_alpha, so alpha / rank, the scale, is kept when alpha != rank. SD3's and FLUX's use the
original models' names, where several of diffusers' modules are one fused layer (the family's
kohya_groups; families/fused.py). The reverse direction (reading kohya files) is diffusers' own
converter inside `load_lora_weights`, or the family's kohya_state_to_diffusers (SD3, FLUX).

DoRA (`.dora_scale`): peft keeps one magnitude per output channel, m, and merges
W' = m * V / ||V||_row with V = W + (alpha / rank) * up @ down. The programs that read kohya files
merge `dora_scale` differently, and no one tensor is right for all of them (read in their code):
- LyCORIS (lycoris/modules/locon.py, apply_weight_decompose with wd_on_out, its default since 3.2):
  dora_scale (out, 1[, 1, 1]) = m, divided by ||V||_row: exactly peft's W'.
- ComfyUI (comfy/weight_adapter/base.py, weight_decompose): reads (out, 1) as per-output too, but
  divides by the base weight's ||W||_row, not ||V||_row; so it merges peft's W' when
  dora_scale = m * ||W||_row / ||V||_row (needs the base weights). Forge ported that function.
- AUTOMATIC1111 (extensions-builtin/Lora/network.py, apply_weight_decompose): one magnitude per input
  channel, (1, in), divided by ||V||_col (LyCORIS's old convention); a per-input magnitude cannot
  hold peft's per-output one, so no file of a peft DoRA merges right there: refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .lora import read_lora

DORA_FOR = ("comfyui", "lycoris", "automatic1111")
A1111_DORA = (
    "AUTOMATIC1111 merges DoRA with one magnitude per input channel (LyCORIS's old convention), which "
    "cannot hold peft's per-output magnitudes, so no kohya file of a DoRA LoRA merges right there; "
    "use ComfyUI or LyCORIS (--dora-for comfyui|lycoris), or train without --use-dora"
)


def _modules(state: dict) -> dict[str, dict[str, object]]:
    """{'unet.down_blocks...to_q': {'down': A, 'up': B}} from diffusers-format keys (pure)."""
    out: dict[str, dict[str, object]] = {}
    for key, value in state.items():
        m = re.match(r"(.+)\.lora_(A|B)(?:\.default)?\.weight$", key)
        dora = re.match(r"(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$", key)
        if key.endswith("embeddings.token_embedding.weight"):
            continue  # a pivotal run's resized embedding matrix (earlier versions saved it here); its token is apart
        if m:
            out.setdefault(m.group(1), {})["down" if m.group(2) == "A" else "up"] = value
        elif dora:  # DoRA's magnitude per output
            out.setdefault(dora.group(1), {})["magnitude"] = value
        else:
            raise UserError(f"{key}: not a LoRA weight of diffusers' format")
    return out


def _alpha(meta: dict, component: str, module: str, rank: int) -> float:
    """peft's lora_alpha for a module: alpha_pattern entries win, as in peft; else lora_alpha; else rank."""
    pattern = meta.get(f"{component}.alpha_pattern") or {}
    for pat, value in pattern.items():
        if module == pat or module.endswith("." + pat) or re.fullmatch(pat, module):
            return float(value)
    alpha = meta.get(f"{component}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)


def kohya_key(family, module: str, unet_config: dict | None = None) -> str:
    """A module's name in kohya's layout ('unet.down_blocks.0...to_q' -> 'lora_unet_down_blocks_0_..._to_q'),
    for a family whose layout does not fuse modules (pure apart from UserError)."""
    component, _, path = module.partition(".")
    if component == family.denoiser:
        name, prefix = family.kohya_unet_name(path, unet_config), "lora_unet"
    elif component in family.kohya_text_encoder_prefixes:
        name = path if path.startswith("text_model.") else f"text_model.{path}"
        prefix = family.kohya_text_encoder_prefixes[component]
    else:
        raise UserError(f"{module}: LoRA on '{component}' has no kohya equivalent for {family.label}")
    return f"{prefix}_{name.replace('.', '_')}"


def to_kohya(
    state: dict,
    adapter_meta: dict,
    family,
    unet_config: dict | None = None,
    dora_for: str = "comfyui",
    base_weight: Callable[[str], object] | None = None,
) -> dict:
    """Our diffusers-format LoRA state dict as kohya's (pure). family: the base model's (families.Family),
    which names its UNet modules and text-encoder prefixes; unet_config: the UNet's config where the
    family's names need it (SDXL's SGM blocks). A DoRA's magnitudes become dora_scale for the program
    dora_for names (see dora_scale); base_weight(module) gives the base model's weight of a module
    ('unet.down_blocks...'), which ComfyUI's convention needs."""
    import torch

    out, fused = {}, {}
    for module, parts in _modules(state).items():
        if not {"down", "up"} <= set(parts):
            raise UserError(f"{module}: has lora_A or lora_B but not both")
        component, _, path = module.partition(".")
        if component == family.denoiser and family.kohya_fused:
            if "magnitude" in parts:
                raise UserError(f"{module}: DoRA has no kohya form for {family.label} (its layers are fused there)")
            alpha = _alpha(adapter_meta, component, path, parts["down"].shape[0])
            fused[path] = (parts["down"], parts["up"], alpha)
            continue
        key = kohya_key(family, module, unet_config)
        down, up = parts["down"], parts["up"]
        alpha = _alpha(adapter_meta, component, path, down.shape[0])
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = up.contiguous()
        out[f"{key}.alpha"] = torch.tensor(alpha, dtype=down.dtype)
        if "magnitude" in parts:
            weight = base_weight(module) if base_weight is not None and dora_for == "comfyui" else None
            out[f"{key}.dora_scale"] = dora_scale(parts["magnitude"], down, up, alpha, dora_for, weight)
    for name, (down, up, alpha) in (family.kohya_entries(fused, unet_config) if fused else {}).items():
        out[f"lora_unet_{name}.lora_down.weight"] = down.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = up.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(alpha, dtype=down.dtype)
    return out


def dora_scale(magnitude, down, up, alpha: float, dora_for: str, weight=None):
    """peft's DoRA magnitude (Linear (out,), Conv2d (1, out, 1, 1)) as the dora_scale tensor the program
    dora_for merges to peft's W' (module docstring), in fp32 (pure)."""

    out_features = up.shape[0]
    shape = (out_features, *[1] * (down.dim() - 1))
    m = magnitude.reshape(-1).double()
    if dora_for == "lycoris":
        return m.reshape(shape).float().contiguous()
    if dora_for == "automatic1111":
        raise UserError(f"--dora-for automatic1111: {A1111_DORA}")
    if dora_for != "comfyui":
        raise UserError(f"--dora-for {dora_for}: one of {', '.join(DORA_FOR)}")
    if weight is None:
        raise UserError("a DoRA LoRA for ComfyUI needs its base model's weights; give --model")
    w = weight.detach().double().reshape(out_features, -1)
    v = w + (alpha / down.shape[0]) * (up.reshape(out_features, -1).double() @ down.reshape(down.shape[0], -1).double())
    return (m * w.norm(dim=1) / v.norm(dim=1)).reshape(shape).float().contiguous()


def base_weights(models: dict) -> Callable[[str], object]:
    """base_weight for to_kohya: a module's frozen base weight ('unet.down_blocks...', 'text_encoder.
    text_model.encoder...') from {'unet': UNet, 'text_encoder': ..., 'text_encoder_2': ...}, whether or
    not peft wraps it."""

    def get(module: str):
        component, _, path = module.partition(".")
        model = models[component]
        if not hasattr(model, "text_model"):  # transformers 5 flattened CLIPTextModel
            path = path.removeprefix("text_model.")
        layer = model.get_submodule(path)
        return getattr(layer, "base_layer", layer).weight

    return get


def kohya_metadata(adapter: dict, run: dict | None, family, name: str, denoiser: dict | None = None) -> dict[str, str]:
    """kohya's ss_* training metadata (what AUTOMATIC1111's and ComfyUI's LoRA browsers show)."""
    rank = adapter.get(f"{family.denoiser}.r") or adapter.get("text_encoder.r")
    alpha = adapter.get(f"{family.denoiser}.lora_alpha") or adapter.get("text_encoder.lora_alpha") or rank
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)) if alpha is not None else "None",
        "ss_base_model_version": family.kohya_model_version(denoiser),
        "ss_v2": str(family.kohya_v2),
        "ss_output_name": name,
        "ss_training_comment": "trained with dreambooth (https://github.com/) LoRA DreamBooth; exported to kohya's layout",
    }
    if any(k.startswith("text_encoder") for k in adapter):
        meta["ss_network_args"] = json.dumps({"train_text_encoder": True})
    if run:
        for ours, theirs in (
            ("model", "ss_sd_model_name"),
            ("max_steps", "ss_max_train_steps"),
            ("learning_rate", "ss_learning_rate"),
            ("learning_rate", "ss_unet_lr"),
            ("text_encoder_lr", "ss_text_encoder_lr"),
            ("resolution", "ss_resolution"),
            ("seed", "ss_seed"),
            ("lr_scheduler", "ss_lr_scheduler"),
            ("lr_warmup_steps", "ss_lr_warmup_steps"),
            ("instance_prompt", "ss_instance_prompt"),
            ("class_prompt", "ss_class_prompt"),
            ("prior_loss_weight", "ss_prior_loss_weight"),
        ):
            if run.get(ours) is not None:
                meta[theirs] = str(run[ours])
    return meta


def kohya_tensors(
    src: Path, run: dict | None, name: str, flag: str = "--lora", dora_for: str = "comfyui", models: dict | None = None
) -> tuple[dict, dict]:
    """(tensors, metadata) of the kohya file of the diffusers-format LoRA file src: its LoRA layers, a
    pivotal run's bundled embedding, kohya's ss_* metadata; run: the run's config (its base model's
    family names the modules). models: the base model's components, for a DoRA for ComfyUI (else loaded from run's
    model when needed)."""
    state, _, adapter = read_lora(src, flag)
    family = _family(state, run)
    unet_config = _unet_config(run.get("model")) if run else None
    dora = any("lora_magnitude_vector" in k for k in state)
    if dora and dora_for == "comfyui" and models is None:
        if not (run and run.get("model")):
            raise UserError(f"{flag}: a DoRA LoRA for ComfyUI needs its base model's weights; give --model")
        from ..models import load_pipeline

        pipe = load_pipeline(run["model"])
        models = {c: getattr(pipe, c) for c in (family.denoiser, *family.text_encoders)}
    try:
        tensors = to_kohya(state, adapter, family, unet_config, dora_for, base_weights(models) if models else None)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None
    tensors.update(bundled_embedding(src.parent, run))
    metadata = kohya_metadata(adapter, run, family, name, unet_config)
    if dora:
        metadata["dreambooth_dora_for"] = dora_for
    return tensors, metadata


def bundled_embedding(folder: Path, run: dict | None) -> dict:
    """A pivotal-tuning run's identifier embedding as AUTOMATIC1111's bundled embedding keys in a LoRA
    file (bundle_emb.<token>.string_to_param.*, or one key per text encoder's part, .clip_l/.clip_g for
    SDXL); {} for other runs."""
    from safetensors import safe_open

    from ..weights import EMBEDDING

    path = Path(folder) / EMBEDDING
    if not (run and run.get("train_identifier_embedding")) or not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        token = (f.metadata() or {}).get("token")
        parts = {k: f.get_tensor(k) for k in f.keys()}
    if set(parts) == {token}:
        return {f"bundle_emb.{token}.string_to_param.*": parts[token]}
    return {f"bundle_emb.{token}.{part}": tensor for part, tensor in parts.items()}


def write_kohya(src: Path, dest: Path, run: dict | None, models: dict | None = None) -> Path:
    """Write the diffusers-format LoRA file src in kohya's layout at dest (training's --save-format)."""
    from safetensors.torch import save_file

    from ..io import atomic_path

    dora_for = (run or {}).get("dora_for") or "comfyui"
    tensors, metadata = kohya_tensors(src, run, dest.stem, dora_for=dora_for, models=models)
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return dest


def run_config(lora: Path) -> dict | None:
    """The saved config of the run a LoRA file belongs to (its folder, or a checkpoint's run), if any."""
    import yaml

    for folder in (lora.parent, lora.parent.parent.parent):
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return None


def _family(state: dict, run: dict | None):
    """The LoRA's family: its base model's, from the run's config; else what its keys say."""
    from ..families import family_of_lora
    from ..models import family_of

    if run and run.get("model"):
        return family_of(run["model"])
    return family_of_lora(state)


def _unet_config(model: str | None) -> dict | None:
    from ..models import denoiser_config

    return denoiser_config(model) if model else None
