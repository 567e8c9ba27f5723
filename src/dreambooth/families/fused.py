"""kohya's LoRA layout for the transformers whose original modules fuse several of diffusers' (FLUX's and
SD3's query, key and value; FLUX's single blocks' attention and MLP input): the names are the original
model's (sd-scripts trains on it; ComfyUI loads onto it), one LoRA per fused layer. A family gives its
groups, {kohya name after lora_unet_: ((diffusers module path, output width), ...)} in the fused weight's
row order; these functions are pure and shared."""

from __future__ import annotations

import re

from ..errors import UserError

Groups = dict[str, tuple[tuple[str, int], ...]]


def to_fused(modules: dict[str, tuple], groups: Groups, label: str) -> dict[str, tuple]:
    """{diffusers path: (down, up, alpha)} -> {kohya name: (down, up, alpha)}. Modules fused in one
    original layer become one LoRA whose down stacks theirs and whose up is block-diagonal (each module's
    scale alpha / rank folded into its block, the fused alpha its rank); a fused part without LoRA gets a
    zero block, so the result equals the separate LoRAs exactly and diffusers' kohya-FLUX converter splits
    it back (its "sparse" case)."""
    import torch

    out, left = {}, dict(modules)
    for name, parts in groups.items():
        present = [p for p, _ in parts if p in left]
        if not present:
            continue
        if len(parts) == 1:
            out[name] = left.pop(parts[0][0])
            continue
        sample = left[present[0]][0]
        rank = sample.shape[0]
        downs, ups = [], []
        for path, rows in parts:
            down, up, alpha = left.pop(path) if path in left else (None, None, None)
            if down is not None and down.shape[0] != rank:
                raise UserError(f"transformer.{path}: rank {down.shape[0]}, but its fused layer's others have {rank}")
            downs.append(down if down is not None else torch.zeros_like(sample))
            ups.append(up * (alpha / rank) if up is not None else torch.zeros(rows, rank, dtype=sample.dtype))
        out[name] = (torch.cat(downs), torch.block_diag(*ups), float(rank * len(parts)))
    if left:
        raise UserError(f"transformer.{sorted(left)[0]}: LoRA on a module with no kohya name for {label}")
    return out


def from_fused(entries: dict[str, tuple], groups: Groups, label: str) -> dict[str, tuple]:
    """The inverse of to_fused: {kohya name: (down, up, alpha)} -> {diffusers path: (down, up, alpha)}.
    A fused LoRA is split by its modules' widths: block-diagonal ones into their blocks, others (trained
    fused, as kohya does) with the whole down for each module and its rows of up."""
    import torch

    out = {}
    for name, (down, up, alpha) in entries.items():
        if name not in groups:
            raise UserError(f"lora_unet_{name}: not a module of this {label} transformer")
        parts = groups[name]
        if len(parts) == 1:
            out[parts[0][0]] = (down, up, alpha)
            continue
        rows = [r for _, r in parts]
        rank, n = down.shape[0], len(parts)
        blocks = torch.split(up, rows)
        r = rank // n
        sparse = rank % n == 0 and all(
            not b[:, :i * r].any() and not b[:, (i + 1) * r:].any() for i, b in enumerate(blocks)
        )  # fmt: skip
        for i, ((path, _), block) in enumerate(zip(parts, blocks)):
            if sparse:
                d, u = down[i * r : (i + 1) * r], block[:, i * r : (i + 1) * r]
                if d.any() or u.any():
                    out[path] = (d, u, float(alpha) * r / rank)
            else:
                out[path] = (down, block, float(alpha))
    return out


def clip_path(name: str) -> str:
    """A CLIP text encoder's module in kohya's name (text_model_encoder_layers_0_self_attn_q_proj) as
    its module path (text_model.encoder.layers.0.self_attn.q_proj)."""
    path = name.replace("text_model_encoder_layers_", "text_model.encoder.layers.")
    path = path.replace("_self_attn_", ".self_attn.").replace("_mlp_", ".mlp.")
    return re.sub(r"layers\.(\d+)_", r"layers.\1.", path)


def fused_state_to_diffusers(state: dict, groups: Groups, te_prefixes: dict[str, str], label: str) -> dict:
    """A kohya file's state dict (lora_unet_<fused name>..., lora_te1_...) in diffusers' layout (alphas
    folded into lora_B), split by these groups' widths (the model's own, not the largest release's).
    te_prefixes: {text encoder attribute: its kohya prefix}; kohya's bare lora_te_ is the first's."""
    component = {prefix: te for te, prefix in te_prefixes.items()}
    component.setdefault("lora_te", next(iter(te_prefixes)))
    entries, te = {}, {}
    for key in state:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        down, up = state[key], state[f"{name}.lora_up.weight"]
        alpha = float(state[f"{name}.alpha"]) if f"{name}.alpha" in state else float(down.shape[0])
        head, _, rest = name.partition("_text_model_")
        if name.startswith("lora_unet_"):
            entries[name[len("lora_unet_") :]] = (down, up, alpha)
        elif rest and head in component:
            te[f"{component[head]}.{clip_path('text_model_' + rest)}"] = (down, up, alpha)
        else:
            raise UserError(f"{key}: not a {label} LoRA key of kohya's layout")
    out = {}
    for path, (down, up, alpha) in [*from_fused(entries, groups, label).items(), *te.items()]:
        prefix = path if path.startswith("text_encoder") else f"transformer.{path}"
        out[f"{prefix}.lora_A.weight"] = down
        out[f"{prefix}.lora_B.weight"] = up * (alpha / down.shape[0])
    return out
