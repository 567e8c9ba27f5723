"""LoHa and LoKr (peft's LoHaConfig / LoKrConfig) in LyCORIS's layout, the one ComfyUI and AUTOMATIC1111
load: each module under its kohya name (`lora_unet_..._to_q`), with LyCORIS's tensors and an alpha.

  LoHa: hada_w1_a (out, r), hada_w1_b (r, in), hada_w2_a, hada_w2_b; delta W = (w1_a w1_b) * (w2_a w2_b)
        (elementwise) x alpha / r.
  LoKr: lokr_w1 and lokr_w2 (or lokr_w2_a (.., r), lokr_w2_b (r, ..)); delta W = kron(w1, w2) x
        alpha / r where a factor is decomposed and x 1 where none is (as ComfyUI and AUTOMATIC1111 read
        it; peft scales by alpha / r always): peft's scale is folded into lokr_w1 and alpha written as r,
        so every reader scales by 1, and the adapter is rebuilt with alpha = r.

Stock diffusers has no loader for these; `generate` here loads them by building the same peft adapters
(from_lycoris) and setting their tensors."""

from __future__ import annotations

import re

from ..errors import UserError

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_PART = re.compile(r"^(.+)\.(" + "|".join(LOHA + LOKR) + r")(?:\.default)?(?:\.weight)?$")


def is_lycoris(keys) -> bool:
    return any(k.endswith((".hada_w1_a", ".lokr_w1", ".lokr_w1_a")) for k in keys)


def algo(keys) -> str:
    return "loha" if any(".hada_" in k for k in keys) else "lokr"


def to_lycoris(peft_states: dict, family, alpha: float, rank: int, unet_config: dict | None = None) -> dict:
    """{component: peft state dict of its LoHa/LoKr adapter} as LyCORIS's tensors (pure)."""
    import torch

    from .kohya import kohya_key

    out = {}
    for component, state in peft_states.items():
        modules: dict[str, dict] = {}
        for key, value in state.items():
            m = _PART.match(key)
            if m is None:
                raise UserError(f"{component}.{key}: not a LoHa or LoKr tensor")
            modules.setdefault(m.group(1), {})[m.group(2)] = value
        for path, parts in modules.items():
            name = kohya_key(family, f"{component}.{path}", unet_config)
            module_alpha = alpha
            if "lokr_w1" in parts:  # the scale in w1; alpha = r (the decomposed factor's rank): readers scale by 1
                parts = {**parts, "lokr_w1": parts["lokr_w1"] * (alpha / rank)}
                module_alpha = float(parts["lokr_w2_b"].shape[0]) if "lokr_w2_b" in parts else float(rank)
            for part, value in parts.items():
                out[f"{name}.{part}"] = value.detach().contiguous()
            out[f"{name}.alpha"] = torch.tensor(module_alpha)
    return out


def from_lycoris(state: dict, family, models: dict, unet_config: dict | None = None) -> dict:
    """LyCORIS tensors back to {component: (peft config, peft state dict)} for the models ({pipeline
    attribute: module}) they name; UserError naming a key no module of the model has (pure apart from
    building the configs)."""
    from peft import LoHaConfig, LoKrConfig

    from .kohya import kohya_key

    names = {}
    for component, model in models.items():
        for path, _ in model.named_modules():
            if path:
                try:
                    names[kohya_key(family, f"{component}.{path}", unet_config)] = (component, path)
                except UserError:
                    continue
    grouped: dict[str, dict[str, dict]] = {}
    alphas: dict[str, float] = {}
    for key, value in state.items():
        name, _, part = key.rpartition(".")
        if name not in names:
            raise UserError(f"{key}: names no module of the model (LoHa/LoKr for another base model?)")
        component, path = names[name]
        if part == "alpha":
            alphas[f"{component}.{path}"] = float(value)
        else:
            grouped.setdefault(component, {}).setdefault(path, {})[part] = value
    kind = algo(state)
    out = {}
    for component, modules in grouped.items():
        some = next(iter(modules.values()))
        if kind == "loha":
            rank = int(some["hada_w1_b"].shape[0])
        else:  # the decomposed factors' rank, else one large enough that peft leaves every w2 whole
            ranks = {int(p["lokr_w2_b"].shape[0]) for p in modules.values() if "lokr_w2_b" in p}
            rank = ranks.pop() if ranks else max(max(p["lokr_w2"].shape) for p in modules.values() if "lokr_w2" in p)
        peft_state, targets = {}, []
        alpha = next((alphas[f"{component}.{p}"] for p in modules if f"{component}.{p}" in alphas), None)
        for path, parts in modules.items():
            targets.append(path)
            peft_state.update({f"{path}.{part}": value for part, value in parts.items()})
        if kind == "loha":
            config = LoHaConfig(r=rank, alpha=alpha if alpha is not None else rank, target_modules=targets)
        else:  # alpha = r: scale 1, as written
            config = LoKrConfig(r=rank, alpha=rank, target_modules=targets)
        out[component] = (config, peft_state)
    return out


def write_lycoris_file(path, family, denoiser, text_encoders: dict, cfg) -> object:
    """The run's LoHa/LoKr adapters (the denoiser's and each trained text encoder's) as one LyCORIS
    file, with kohya's metadata keys that say what it is (ss_network_module, ss_network_args)."""
    import json

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..io import atomic_path
    from ..models import denoiser_config
    from .lora import text_encoder_prefix

    states = {family.denoiser: get_peft_model_state_dict(denoiser)}
    for name, te in text_encoders.items():
        if te is not None and getattr(te, "peft_config", None):
            prefix = text_encoder_prefix(te)
            states[name] = {f"{prefix}{k}": v for k, v in get_peft_model_state_dict(te).items()}
    alpha = float(cfg.lora_alpha if cfg.lora_alpha is not None else cfg.rank)
    tensors = to_lycoris(states, family, alpha, cfg.rank, denoiser_config(cfg.model))
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": cfg.adapter}),
            "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": family.kohya_version}  # fmt: skip
    with atomic_path(path) as tmp:
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path
