"""`dreambooth export`: a trained LoRA in the layout kohya's sd-scripts, AUTOMATIC1111 and ComfyUI load.

Our runs write diffusers' format (`unet.<module>.lora_A.weight`, peft's config in the metadata). The
kohya layout names each module with underscores under a prefix and stores the scale as a tensor:

    lora_unet_<module_path>.lora_down.weight / .lora_up.weight / .alpha
    lora_te_<module_path> ...                  (SD 1.x / 2.x text encoder)
    lora_te1_ ... / lora_te2_ ...              (SDXL's two text encoders)

SD 1.x/2.x modules keep diffusers' UNet names (kohya trains those on a diffusers-layout UNet); SDXL's
use the SGM/LDM block names (input_blocks.4.1...) of the UNet kohya trains SDXL on. `.alpha` is the
run's lora_alpha, so alpha / rank, the scale, is kept when alpha != rank. The reverse direction
(reading kohya files) is diffusers' own converter inside `load_lora_weights`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UserError

FORMATS = ("kohya", "diffusers", "single-file")
_RESNET = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def sgm_module_name(name: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """A diffusers UNet module path in the SGM/LDM layout of SDXL's original UNet (pure).

    layers_per_block: the UNet's (2 for SDXL); up_has_attention[i]: whether up block i has attentions
    (its upsampler then sits at index 2 of the output block instead of 1)."""
    for old, new in _TOP.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    lpb = layers_per_block
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.?(.*)$", name)
    mid = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.?(.*)$", name)
    if m:
        kind, i, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(lpb + 1) * (i + 1)}.0.op" + rest[len("conv") :]
            block = f"input_blocks.{(lpb + 1) * i + j + 1}.{0 if part == 'resnets' else 1}"
        else:
            if part == "upsamplers":
                return f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_has_attention[i] else 1}.{rest}"
            block = f"output_blocks.{(lpb + 1) * i + j}.{0 if part == 'resnets' else 1}"
    elif mid:
        part, j, rest = mid.group(1), int(mid.group(2)), mid.group(3)
        block = f"middle_block.{2 * j if part == 'resnets' else 1}"
    else:
        raise UserError(f"cannot name the UNet module {name} in the SGM layout")
    if part == "resnets":
        head, _, tail = rest.partition(".")
        rest = _RESNET.get(head, head) + (f".{tail}" if tail else "")
    return f"{block}.{rest}" if rest else block


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


def to_kohya(state: dict, adapter_meta: dict, sdxl_unet: dict | None = None) -> dict:
    """Our diffusers-format LoRA state dict as kohya's (pure). sdxl_unet: the UNet's config when the
    LoRA is for SDXL (SGM names, lora_te1_/lora_te2_); None for SD 1.x/2.x."""
    import torch

    out = {}
    up_attn = None
    if sdxl_unet is not None:
        up_attn = [t.startswith("CrossAttn") for t in sdxl_unet["up_block_types"]]
    for module, parts in _modules(state).items():
        if not {"down", "up"} <= set(parts):
            raise UserError(f"{module}: has lora_A or lora_B but not both")
        component, _, path = module.partition(".")
        if component == "unet":
            name = sgm_module_name(path, sdxl_unet["layers_per_block"], up_attn) if sdxl_unet else path
            prefix = "lora_unet"
        elif component in ("text_encoder", "text_encoder_2"):
            name = path if path.startswith("text_model.") else f"text_model.{path}"
            prefix = {"text_encoder": "lora_te1" if sdxl_unet else "lora_te", "text_encoder_2": "lora_te2"}[component]
        else:
            raise UserError(f"{module}: LoRA on '{component}' has no kohya equivalent")
        key = f"{prefix}_{name.replace('.', '_')}"
        down = parts["down"]
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = parts["up"].contiguous()
        out[f"{key}.alpha"] = torch.tensor(_alpha(adapter_meta, component, path, down.shape[0]), dtype=down.dtype)
        if "magnitude" in parts:  # DoRA: LyCORIS's dora_scale, one norm per output (ComfyUI, diffusers read it)
            mag = parts["magnitude"]
            out[f"{key}.dora_scale"] = mag.reshape(-1, *[1] * (down.dim() - 1)).contiguous()
    return out


def read_lora(path: Path, flag: str = "--lora") -> tuple[dict, dict, dict]:
    """(tensors, safetensors metadata, peft adapter metadata by '<component>.<field>')."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types; any means unreadable
        raise UserError(f"{flag} {path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
    adapter = json.loads(meta.get("lora_adapter_metadata", "{}") or "{}")
    return state, meta, adapter


def rank_and_alpha(state: dict, adapter_meta: dict) -> tuple[int, float] | None:
    """The UNet LoRA's rank and alpha (the most common ones, should modules differ) of a diffusers or
    kohya state dict; None when it holds no UNet LoRA (pure)."""
    from collections import Counter

    if is_kohya(state):
        downs = {
            k[: -len(".lora_down.weight")]: v
            for k, v in state.items()
            if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")
        }
        if not downs:
            return None
        rank = Counter(int(v.shape[0]) for v in downs.values()).most_common(1)[0][0]
        alphas = [float(state[f"{k}.alpha"]) if f"{k}.alpha" in state else float(v.shape[0]) for k, v in downs.items()]
        return rank, Counter(alphas).most_common(1)[0][0]
    downs = [v for k, v in state.items() if k.startswith("unet.") and re.search(r"\.lora_A(\.default)?\.weight$", k)]
    if not downs:
        return None
    rank = Counter(int(v.shape[0]) for v in downs).most_common(1)[0][0]
    alpha = adapter_meta.get("unet.lora_alpha")
    return rank, float(alpha) if alpha is not None else float(rank)


def is_kohya(state: dict) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in state)


def kohya_metadata(adapter: dict, run: dict | None, sdxl: bool, v2: bool, name: str) -> dict[str, str]:
    """kohya's ss_* training metadata (what AUTOMATIC1111's and ComfyUI's LoRA browsers show)."""
    rank = adapter.get("unet.r") or adapter.get("text_encoder.r")
    alpha = adapter.get("unet.lora_alpha") or adapter.get("text_encoder.lora_alpha") or rank
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)) if alpha is not None else "None",
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else ("sd_v2" if v2 else "sd_v1"),
        "ss_v2": str(bool(v2)),
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


def run_export(
    lora: str | None,
    out: str,
    fmt: str = "kohya",
    overwrite: bool = False,
    model: str | None = None,
    dtype: str = "fp16",
) -> Path:
    """Write the LoRA of a run, checkpoint or file to `out` in `fmt` (kohya or diffusers), or with
    fmt single-file a whole model (a diffusers folder, e.g. a full fine-tune's run) as one original-layout
    checkpoint; returns the written path."""
    import yaml
    from safetensors.torch import save_file

    from .io import atomic_path
    from .weights import lora_file

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if fmt == "single-file" and (model is None or lora is not None):
        raise UserError("--format single-file: exports --model (a whole model), not --lora")
    if fmt != "single-file" and lora is None:
        raise UserError("--lora: required with --format " + fmt)
    dest = Path(out).expanduser()
    if dest.suffix != ".safetensors":
        raise UserError(f"{out}: the exported file must end in .safetensors")
    if dest.exists() and not overwrite:
        raise UserError(f"{out}: exists (add --overwrite to replace it)")
    if not dest.parent.is_dir():
        raise UserError(f"{out}: no such folder {dest.parent}")
    if fmt == "single-file":
        return _export_single_file(model, dest, dtype)
    src = lora_file(lora)
    if dest.resolve() == src.resolve():
        raise UserError(f"{out}: is the LoRA being exported")
    state, meta, adapter = read_lora(src)
    if is_kohya(state) and fmt == "kohya":
        raise UserError(f"--lora {lora}: is already in kohya's layout")
    run = None
    for folder in (src.parent, src.parent.parent.parent):  # a run folder, or a checkpoint's run
        if (folder / "config.yaml").is_file():
            run = yaml.safe_load((folder / "config.yaml").read_text()) or {}
            break
    if model is not None:  # the base model, for a LoRA file without its run (SDXL's block names need it)
        from .models import check_model

        check_model(model)
        run = {**(run or {}), "model": model}
    if is_kohya(state):  # to diffusers' layout
        if not (run and run.get("model")):
            raise UserError(f"--lora {lora}: a kohya file converts against its base model; give --model")
        return _kohya_to_diffusers(src, run["model"], dest)
    if fmt == "kohya":
        tensors, metadata = kohya_state(state, adapter, run, dest.stem, flag=f"--lora {lora}")
        tensors.update(bundled_embedding(src.parent, run))
    else:
        tensors, metadata = state, meta
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return dest


def _kohya_to_diffusers(src: Path, model: str, dest: Path) -> Path:
    """A kohya file in diffusers' layout, written from what stock `load_lora_weights` makes of it (its
    converter, its alphas as peft's lora_alpha / alpha_pattern), so loading the result builds the
    same adapters."""
    from .methods.lora import write_lora_file
    from .models import load_pipeline

    pipe = load_pipeline(model)
    try:
        pipe.load_lora_weights(str(src.parent), weight_name=src.name, adapter_name="default")
    except (ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"--lora {src}: does not fit --model {model} ({str(e).splitlines()[0][:200]})") from None
    te2 = getattr(pipe, "text_encoder_2", None)
    return write_lora_file(dest, pipe.unet, pipe.text_encoder, te2, sdxl=te2 is not None)


def _export_single_file(model: str, dest: Path, dtype: str) -> Path:
    import torch
    from safetensors.torch import save_file

    from .io import atomic_path
    from .models import check_model, load_pipeline
    from .singlefile import single_file_state

    if Path(model).expanduser().is_file():
        raise UserError(f"--model {model}: is a single file already")
    check_model(model)
    pipe = load_pipeline(model)
    try:
        state = single_file_state(pipe, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[dtype])
    except ValueError as e:
        raise UserError(f"--model {model}: {e}") from None
    del pipe
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return dest


def kohya_state(state: dict, adapter: dict, run: dict | None, name: str, flag: str = "--lora") -> tuple[dict, dict]:
    """(tensors, ss_* metadata) of a diffusers-format LoRA state in kohya's layout; run: its config."""
    sdxl = any(k.startswith("text_encoder_2.") for k in state) or bool(run and _is_sdxl(run.get("model")))
    unet_config = _unet_config(run.get("model")) if sdxl and run else None
    if sdxl and unet_config is None:
        raise UserError(f"{flag}: an SDXL LoRA needs its base model to name the SGM blocks; give --model")
    v2 = _cross_attention_dim(state) == 1024
    return to_kohya(state, adapter, unet_config), kohya_metadata(adapter, run, sdxl, v2, name)


def bundled_embedding(folder: Path, run: dict | None) -> dict:
    """A pivotal-tuning run's identifier embedding as AUTOMATIC1111's bundled embedding keys in a LoRA
    file (bundle_emb.<token>.string_to_param.*, or .clip_l/.clip_g for SDXL); {} for other runs."""
    from safetensors import safe_open

    from .methods.textual_inversion import EMBEDS_NAME

    path = Path(folder) / EMBEDS_NAME
    if not (run and run.get("train_identifier_embedding")) or not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        token = (f.metadata() or {}).get("token")
        parts = {k: f.get_tensor(k) for k in f.keys()}
    if {"clip_l", "clip_g"} <= set(parts):
        return {f"bundle_emb.{token}.clip_l": parts["clip_l"], f"bundle_emb.{token}.clip_g": parts["clip_g"]}
    return {f"bundle_emb.{token}.string_to_param.*": parts[token]}


def write_kohya(src: Path, dest: Path, run: dict | None) -> Path:
    """Write the diffusers-format LoRA file src in kohya's layout at dest (training's --save-format)."""
    from safetensors.torch import save_file

    from .io import atomic_path

    state, _, adapter = read_lora(src)
    tensors, metadata = kohya_state(state, adapter, run, dest.stem)
    tensors.update(bundled_embedding(src.parent, run))
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return dest


def _cross_attention_dim(state: dict) -> int | None:
    for key, value in state.items():
        if key.startswith("unet.") and ".attn2.to_k.lora_A" in key:
            return int(value.shape[1])
    return None


def _unet_config(model: str | None) -> dict | None:
    from .models import unet_config

    return unet_config(model) if model else None


def _is_sdxl(model: str | None) -> bool:
    from .models import is_sdxl

    return bool(model) and is_sdxl(model)
