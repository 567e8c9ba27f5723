"""Independent re-implementations of what the programs that open our files do with them, written from
their code (read, not copied) and never importing ours: AUTOMATIC1111's infotext parser, extra-network
tags and LoRA hashes; civitai's parameters parser and resource detection; ComfyUI's PNG import; the
DoRA merge of LyCORIS, ComfyUI and AUTOMATIC1111; ComfyUI's SD3 model layout and its kohya LoRA loading. Tests check our outputs against these.
"""

from __future__ import annotations

import hashlib
import json
import re

import torch

# --- AUTOMATIC1111: modules/infotext_utils.py parse_generation_parameters ------------------------------

A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")
A1111_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def a1111_parse(text: str) -> dict:
    """What AUTOMATIC1111 reads from a "parameters" text: Prompt, Negative prompt and the key-value pairs
    (values JSON-unquoted, WxH split into -1/-2), the last line counting only with >= 3 pairs."""
    res: dict = {}
    prompt, negative, done = "", "", False
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done = True
            line = line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in A1111_PARAM.findall(last):
        if v and v[0] == '"' and v[-1] == '"':
            try:
                v = json.loads(v)
            except ValueError:
                pass
        m = A1111_SIZE.match(v)
        if m:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res["Prompt"], res["Negative prompt"] = prompt, negative
    return res


def a1111_loras(prompt: str) -> list[dict]:
    """extra_networks.parse_prompt + ExtraNetworkLora.activate: each <lora:...> tag's name, text-encoder
    and UNet multipliers (first positional: te, second: unet, which defaults to te; te= / unet= named)."""
    out = []
    for kind, args in A1111_EXTRA_NET.findall(prompt):
        if kind not in ("lora", "lyco"):
            continue
        items = args.split(":")
        positional = [i for i in items if len(i.split("=", 2)) != 2]
        named = dict(i.split("=", 1) for i in items if len(i.split("=", 2)) == 2)
        te = float(positional[1]) if len(positional) > 1 else 1.0
        te = float(named.get("te", te))
        unet = float(positional[2]) if len(positional) > 2 else te
        unet = float(named.get("unet", unet))
        out.append({"name": positional[0], "te": te, "unet": unet})
    return out


def a1111_lora_hashes(value: str) -> dict[str, str]:
    """lora_script.infotext_pasted's reading of "Lora hashes"."""
    pairs = [x.strip().split(":", 1) for x in value.split(",")]
    return {x[0].strip().replace(",", ""): x[1].strip() for x in pairs}


def a1111_short_hash(path) -> str:
    """network.NetworkOnDisk.shorthash of a .safetensors file: hashes.addnet_hash_safetensors[:12]."""
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


def a1111_model_hash(path) -> str:
    """sd_models.CheckpointInfo.shorthash: the whole file's SHA-256, 10 hex digits."""
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:10]


def a1111_paste(prompt: str, params: dict, on_disk: dict[str, str]) -> str:
    """infotext_pasted: each <lora:NAME: whose Lora hashes entry matches a file on disk (short hash ->
    its alias) is renamed to that file's alias."""
    hashes = a1111_lora_hashes(params.get("Lora hashes", "")) if params.get("Lora hashes") else {}

    def swap(m):
        short = hashes.get(m.group(1))
        return f"<lora:{on_disk[short]}:" if short in on_disk else m.group(0)

    return re.sub("<lora:([^:]+):", swap, prompt)


# --- civitai: src/utils/metadata/automatic.metadata.ts -----------------------------------------------

CIVITAI_NETS = re.compile(r"<(lora|hypernet):([a-zA-Z0-9_\.\-]+):([0-9.]+)>")


def _civitai_details(line: str) -> dict:
    """parseDetailsLine: k: v pairs split on ',' outside quotes; a quoted value parsed again as pairs."""
    result: dict = {}
    key, value, quoted = "", "", False
    for ch in line:
        if ch == '"':
            if quoted:
                result[key] = _civitai_details(value.strip())
                key, value = "", ""
            quoted = not quoted
        elif ch == ":" and not quoted:
            key, value = value.strip(), ""
        elif ch == "," and not quoted:
            if key:
                result[key] = value.strip()
            key, value = "", ""
        else:
            value += ch
    if key:
        result[key] = value.strip()
    return result


def civitai_parse(text: str) -> dict:
    """The prompt, the details and the resources civitai detects in a "parameters" text."""
    lines = [line for line in text.split("\n") if line.strip()]
    details = next((line for line in lines if line.startswith("Steps: ")), None)
    assert details is not None, "civitai reads nothing without a line that starts with 'Steps: '"
    lines.remove(details)
    meta = _civitai_details(details.rstrip(", "))
    prompt, *negative = [x.strip() for x in "\n".join(lines).split("Negative prompt:")]
    resources = [{"type": t, "name": n, "weight": float(w)} for t, n, w in CIVITAI_NETS.findall(prompt)]
    for name, short in (meta.pop("Lora hashes", None) or {}).items():
        found = next((r for r in resources if r["name"] == name), None)
        if found:
            found["hash"] = short
        else:
            resources.append({"type": "lora", "name": name, "hash": short})
    if meta.get("Model") and meta.get("Model hash"):
        resources.append({"type": "model", "name": meta["Model"], "hash": meta["Model hash"]})
    return {"prompt": prompt, "negative": negative[0] if negative else "", "meta": meta, "resources": resources}


# --- ComfyUI frontend: src/scripts/pnginfo.ts importA1111 --------------------------------------------


def comfyui_import(text: str) -> dict | None:
    """What ComfyUI's PNG import takes from a "parameters" text: None where it imports nothing (no
    '\\nSteps:' line, or no '\\nNegative prompt:' before it); else the options and one LoraLoader per
    <lora:NAME:W...> tag (both strengths from the first number)."""
    p = text.rfind("\nSteps:")
    if p < 0:
        return None
    p2 = text.rfind("\nNegative prompt:", 0, p)
    if p2 < 0:
        return None
    positive = text[:p2].strip()
    loras = []
    for m in re.finditer(r"<lora:([^:]+:[^>]+)>", positive):
        name, weight = m.group(1).split(":")[:2]
        loras.append({"name": name, "strength_model": float(weight), "strength_clip": float(weight)})
    opts = {}
    for m in re.finditer(r'\s*([^:]+:\s*([^"\{].*?|".*?"|\{.*?\}))\s*(,|$)', text[p:].split("\n")[1]):
        k, v = m.group(1).split(":")[:2]
        opts[k.strip().lower()] = v.strip().rstrip(",")
    return {"positive": re.sub(r"<lora:[^>]+>", "", positive).strip(), "loras": loras, "opts": opts}


# --- DoRA merges ------------------------------------------------------------------------------------


def _delta(up, down, shape):
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


def _per_output(x):
    return x.flatten(1).norm(dim=1).reshape(x.shape[0], *[1] * (x.dim() - 1))


def _per_input(x):
    return x.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, x.shape[1], *[1] * (x.dim() - 2))


def lycoris_merge(w, up, down, alpha, dora_scale, strength=1.0):
    """LyCORIS LoConModule.get_merged_weight with wd_on_out=True (its default since 3.2.0)."""
    v = (w + alpha / down.shape[0] * _delta(up, down, w.shape)).float()
    scale = dora_scale / (_per_output(v) + torch.finfo(v.dtype).eps)
    if strength != 1:
        scale = strength * (scale - 1) + 1
    return v * scale


def comfyui_merge(w, up, down, alpha, dora_scale, strength=1.0):
    """ComfyUI weight_adapter.base.weight_decompose: the axis from dora_scale's shape; on the output
    axis it divides by the base weight's norm."""
    v = w + alpha / down.shape[0] * _delta(up, down, w.shape)
    norm = _per_output(w) if dora_scale.shape[0] == w.shape[0] else _per_input(v)
    merged = v * (dora_scale / (norm + torch.finfo(w.dtype).eps))
    return merged if strength == 1.0 else w + strength * (merged - w)


def a1111_merge(w, up, down, alpha, dora_scale, strength=1.0):
    """AUTOMATIC1111 network.NetworkModule.finalize_updown/apply_weight_decompose: per input channel."""
    v = w + alpha / down.shape[0] * _delta(up, down, w.shape)
    return w + strength * (v * (dora_scale / _per_input(v)) - w)


# --- ComfyUI: SD3 models and kohya LoRA files on them -----------------------------------------------
# comfy/utils.py mmdit_to_diffusers (MMDIT_MAP_BASIC, MMDIT_MAP_BLOCK, qkv fused from to_q/k/v, the
# swapped shift/scale of norm_out and of the last block's context modulation) and comfy/lora.py
# model_lora_keys_unet ("lora_unet_" + the model's key, dots as underscores) / model_lora_keys_clip
# (lora_te1_ CLIP-L, lora_te2_ CLIP-G), merged as weight_adapter/lora.py does: w + alpha / rank * up @ down.

_MMDIT_BLOCK = {
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
}
_MMDIT_BASIC = {
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_MMDIT_NORMS = {
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
}
_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def _swap(w):
    shift, scale = w.chunk(2, dim=0)
    return torch.cat([scale, shift])


def comfyui_mmdit_weights(diffusers_state: dict, depth: int, ends=("weight",)) -> dict:
    """ComfyUI's SD3 model (diffusion_model.joint_blocks.N...) from a diffusers SD3 transformer's state
    dict (peft-wrapped or not): the linear layers' weights, or with ends=("weight", "bias") every tensor
    (the original checkpoint's layout: also the q/k norms, the patch embedding and pos_embed)."""

    def get(path, end):
        return diffusers_state.get(f"{path}.base_layer.{end}", diffusers_state.get(f"{path}.{end}"))

    out = {}
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"diffusion_model.joint_blocks.{i}"
        for end in ends:
            for theirs, parts in _QKV.items():
                ws = [get(f"{src}.{p}", end) for p in parts]
                if all(w is not None for w in ws):
                    out[f"{dst}.{theirs}.{end}"] = torch.cat(ws)
            for theirs, ours in _MMDIT_BLOCK.items():
                w = get(f"{src}.{ours}", end)
                if w is not None:
                    swap = theirs.startswith("context_block.adaLN") and i == depth - 1
                    out[f"{dst}.{theirs}.{end}"] = _swap(w) if swap else w
        if "bias" in ends:  # the RMS norms of queries and keys (SD 3.5)
            for theirs, ours in _MMDIT_NORMS.items():
                w = get(f"{src}.{ours}", "weight")
                if w is not None:
                    out[f"{dst}.{theirs}.weight"] = w
    basic = {**_MMDIT_BASIC, **({"x_embedder.proj": "pos_embed.proj"} if "bias" in ends else {})}
    for end in ends:
        for theirs, ours in basic.items():
            out[f"diffusion_model.{theirs}.{end}"] = get(ours, end)
        out[f"diffusion_model.final_layer.adaLN_modulation.1.{end}"] = _swap(get("norm_out.linear", end))
    if "bias" in ends:
        out["diffusion_model.pos_embed"] = diffusers_state["pos_embed.pos_embed"]
    return out


def comfyui_clip_weights(te1_state: dict, te2_state: dict) -> dict:
    """ComfyUI's SD3 CLIP weights (clip_l.transformer..., clip_g.transformer...) from the two encoders'."""
    out = {}
    for prefix, state in (("clip_l", te1_state), ("clip_g", te2_state)):
        for k, v in state.items():
            if k.endswith(".weight"):
                k = k.replace(".base_layer.", ".")
                k = k if k.startswith("text_model.") else f"text_model.{k}"
                out[f"{prefix}.transformer.{k}"] = v
    return out


def comfyui_load_lora(model: dict, lora: dict) -> tuple[dict, list[str]]:
    """The model's weights with a kohya file merged at strength 1, and the file's LoRA names ComfyUI
    would not load (it warns "lora key not loaded")."""
    key_map = {}
    for k in model:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_map["lora_unet_" + k[len("diffusion_model.") : -len(".weight")].replace(".", "_")] = k
        for clip, prefix in (("clip_l", "lora_te1_"), ("clip_g", "lora_te2_")):
            m = re.match(rf"{clip}\.transformer\.text_model\.encoder\.layers\.(\d+)\.(.+)\.weight$", k)
            if m:
                key_map[f"{prefix}text_model_encoder_layers_{m.group(1)}_{m.group(2).replace('.', '_')}"] = k
    merged, missed = dict(model), []
    for key in lora:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        if name not in key_map:
            missed.append(name)
            continue
        down, up = lora[key].float(), lora[f"{name}.lora_up.weight"].float()
        alpha = float(lora[f"{name}.alpha"]) if f"{name}.alpha" in lora else down.shape[0]
        target = key_map[name]
        merged[target] = merged[target] + (alpha / down.shape[0]) * (up @ down)
    return merged, missed


def comfyui_lycoris_delta(parts: dict, alpha: float | None, shape):
    """A LoHa or LoKr module's weight change as ComfyUI computes it (comfy/weight_adapter/loha.py and
    lokr.py; AUTOMATIC1111's network_hada.py / network_lokr.py agree): LoHa (w1_a w1_b) * (w2_a w2_b) x
    alpha / dim with dim = w1_b's rows; LoKr kron(w1, w2), each factor whole or a product, x alpha / dim
    where a factor is a product (dim its rank) and x 1 where none is."""
    import torch

    if "hada_w1_a" in parts:
        w = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
        dim = parts["hada_w1_b"].shape[0]
    else:
        dim = None
        w1 = parts.get("lokr_w1")
        if w1 is None:
            dim = parts["lokr_w1_b"].shape[0]
            w1 = parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        w2 = parts.get("lokr_w2")
        if w2 is None:
            dim = parts["lokr_w2_b"].shape[0]
            w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        w = torch.kron(w1, w2)
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return (w * scale).reshape(shape)
