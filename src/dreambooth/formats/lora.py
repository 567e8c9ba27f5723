"""LoRA files: reading either layout (diffusers' or kohya's), writing diffusers' (the one our runs
write: `unet.<module>.lora_A.weight`, peft's config of each component in the metadata, which stock
`load_lora_weights` restores exactly)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError
from ..io import atomic_path


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
    from ..families import denoiser_names

    prefixes = tuple(f"{d}." for d in denoiser_names())
    downs = [v for k, v in state.items() if k.startswith(prefixes) and re.search(r"\.lora_A(\.default)?\.weight$", k)]
    if not downs:
        return None
    rank = Counter(int(v.shape[0]) for v in downs).most_common(1)[0][0]
    alpha = next((adapter_meta[f"{p}lora_alpha"] for p in prefixes if f"{p}lora_alpha" in adapter_meta), None)
    return rank, float(alpha) if alpha is not None else float(rank)


def is_kohya(state: dict) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in state)


def text_encoder_prefix(te) -> str:
    """What a text encoder's module names take in a LoRA file: transformers 5 flattened CLIPTextModel;
    the text_model. prefix older diffusers, kohya's converters and AUTOMATIC1111 expect is kept (new
    diffusers strips it)."""
    return "" if hasattr(te, "text_model") else "text_model."


def write_lora_file(path: Path, family, denoiser, text_encoders: dict) -> Path:
    """diffusers' LoRA file (pytorch_lora_weights.safetensors) of the adapters on the denoiser and on the text
    encoders ({pipeline attribute: model}), with peft's config of each in its metadata, written by the
    family's pipeline class, so stock `load_lora_weights` restores them exactly. A text encoder without
    an adapter is left out."""
    from peft.utils import get_peft_model_state_dict

    def layers(te):
        if te is None or not getattr(te, "peft_config", None):
            return None, None
        # Pivotal tuning resizes the token embeddings; peft would then add the whole matrix, which is no
        # LoRA layer (the new token is saved apart, in learned_embeds.safetensors).
        state = get_peft_model_state_dict(te, save_embedding_layers=False)
        # peft writes DoRA's magnitudes without ".weight"; transformers' adapter loading (which
        # diffusers uses for text encoders) maps only the ".weight" form, and peft reads both.
        state = {f"{k}.weight" if k.endswith("lora_magnitude_vector") else k: v for k, v in state.items()}
        state = {f"{text_encoder_prefix(te)}{k}": v for k, v in state.items()}
        return state, te.peft_config["default"].to_dict()

    kw = {
        f"{family.denoiser}_lora_layers": get_peft_model_state_dict(denoiser, save_embedding_layers=False),
        f"{family.denoiser}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict(),
    }
    for name in family.trainable_text_encoders:  # text_encoder_lora_layers, text_encoder_2_lora_layers, ...
        state, meta = layers(text_encoders.get(name))
        kw.update({f"{name}_lora_layers": state, f"{name}_lora_adapter_metadata": meta})
    with atomic_path(path) as tmp:
        family.pipeline_class().save_lora_weights(tmp.parent, weight_name=tmp.name, **kw)
    return path
