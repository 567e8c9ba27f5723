"""`dreambooth lora resize`, `lora merge`, `lora extract` and `lora bake`: LoRA files rewritten without training, on the
products the adapters add to the weights (delta W = alpha / r x up @ down, per module); and a model with
a LoRA baked in.

resize: each module's delta W through its SVD, keeping the R largest singular values (the best rank-R
approximation in the Frobenius norm, Eckart-Young); it prints, per layer, the share of delta W's
Frobenius norm kept (sqrt of the kept singular values' squares over all of them), as kohya's
resize_lora.py reports it. Resizing to the LoRA's own rank is exact.

merge: several LoRAs of one base model into one. By default the ranks are concatenated (down rows stacked,
up columns stacked and weighted), so the merged file adds exactly w1 delta W1 + w2 delta W2 + ...; with
--rank R the sum is then resized to R by SVD.

resize and merge read and write diffusers' layout (peft's keys and config in the metadata, which stock
`load_lora_weights` restores); `export --format kohya` then writes kohya's.

extract: a LoRA from a fully fine-tuned model: each linear layer of the denoiser and text encoders
whose weights the fine-tune changed, its change through SVD to --rank (kohya's extract_lora_from_models).

bake: the base model with the LoRA (either layout) fused into its weights by stock diffusers' fuse_lora,
at --scale, written as a diffusers folder or, for OUT.safetensors, one checkpoint in the original
layout (as `export --format single-file` writes it)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import UserError
from .io import atomic_path

_DOWN = re.compile(r"(.+)\.lora_A(\.default)?\.weight$")


def read(path_or_run: str, flag: str) -> tuple[dict, dict, dict, str]:
    """(modules: name -> (down, up, scale), other tensors, peft metadata by '<component>.<field>', the
    file's path), from a run folder, a checkpoint folder or a LoRA file in diffusers' layout."""
    from .formats.lora import is_kohya, read_lora
    from .weights import lora_file

    path = lora_file(path_or_run, flag)
    state, _, adapter = read_lora(path, flag)
    if is_kohya(state):
        raise UserError(f"{flag} {path_or_run}: in kohya's layout; convert it first with `dreambooth export --lora "
                        f"{path} --format diffusers --model BASE OUT.safetensors`")  # fmt: skip
    modules, rest = {}, {}
    for key, tensor in state.items():
        m = _DOWN.match(key)
        if m is None:
            if ".lora_B" not in key:
                rest[key] = tensor
            continue
        name = m.group(1)
        component = name.split(".")[0]
        if adapter.get(f"{component}.use_dora"):
            raise UserError(f"{flag} {path_or_run}: a DoRA LoRA (its magnitudes are not a product of ranks)")
        up = state[key.replace(".lora_A", ".lora_B")]
        r = tensor.shape[0]
        alpha = _pattern(adapter.get(f"{component}.alpha_pattern") or {}, name, adapter.get(f"{component}.lora_alpha"))
        alpha = float(alpha if alpha is not None else r)
        scale = alpha / (math.sqrt(r) if adapter.get(f"{component}.use_rslora") else r)
        modules[name] = (tensor.float(), up.float(), scale)
    if not modules:
        raise UserError(f"{flag} {path_or_run}: holds no LoRA")
    return modules, rest, adapter, str(path)


def _pattern(patterns: dict, name: str, default):
    """peft's per-module override (its keys match a module name's end), else default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", name):
            return value
    return default


def delta(down, up, scale: float):
    """The module's weight change, flattened to (out, in x kernel)."""
    return scale * (up.flatten(1) @ down.flatten(1))


def low_rank(change, rank: int) -> tuple[object, object, float]:
    """(down (R, in), up (out, R)) whose product is the best rank-R approximation of a flattened weight
    change (its SVD, the singular values split evenly), and the share of its Frobenius norm kept (pure)."""
    import torch

    u, s, vh = torch.linalg.svd(change, full_matrices=False)
    r = min(rank, s.numel())
    total = float(s.pow(2).sum())
    kept = math.sqrt(float(s[:r].pow(2).sum()) / total) if total > 0 else 1.0
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).contiguous(), (u[:, :r] * root[None, :]).contiguous(), kept


def resize_module(down, up, scale: float, rank: int) -> tuple[object, object, float]:
    """A module's (down, up) at rank R (scale 1; conv shapes kept), and the share kept (pure)."""
    new_down, new_up, kept = low_rank(delta(down, up, scale), rank)
    r = new_down.shape[0]
    return new_down.reshape(r, *down.shape[1:]), new_up.reshape(up.shape[0], r, *up.shape[2:]), kept


def merge_modules(loras: list[dict], weights: list[float], flags: list[str]) -> dict:
    """One module dict whose every product is the weighted sum of the loras' (ranks concatenated; a
    module one LoRA lacks counts zero there) (pure apart from UserError)."""
    import torch

    names = sorted(set().union(*loras))
    ranks = [max(d.shape[0] for d, _, _ in lora.values()) for lora in loras]
    out = {}
    for name in names:
        present = [(i, lora[name]) for i, lora in enumerate(loras) if name in lora]
        shapes = {(tuple(d.shape[1:]), tuple(u.shape[:1]) + tuple(u.shape[2:])) for _, (d, u, _) in present}
        if len(shapes) > 1:
            (a, (da, ua, _)), (b, (db, ub, _)) = present[0], present[1]
            raise UserError(
                f"{flags[b]}: a LoRA for another base model than {flags[a]} ({name} adapts {tuple(ub.shape[:1])} x "
                f"{tuple(db.shape[1:])} there and {tuple(ua.shape[:1])} x {tuple(da.shape[1:])} here)"
            )
        d0, u0, _ = present[0][1]
        downs, ups = [], []
        for i, lora in enumerate(loras):
            if name in lora:
                d, u, s = lora[name]
                d, u = _pad_rank(d, u, ranks[i])
                downs.append(d)
                ups.append(weights[i] * s * u)
            else:
                downs.append(torch.zeros(ranks[i], *d0.shape[1:]))
                ups.append(torch.zeros(u0.shape[0], ranks[i], *u0.shape[2:]))
        out[name] = (torch.cat(downs), torch.cat(ups, dim=1), 1.0)
    return out


def _pad_rank(down, up, rank: int):
    """A module of lower rank than its LoRA's others, padded with zero rows (its product unchanged)."""
    import torch

    extra = rank - down.shape[0]
    if extra <= 0:
        return down, up
    return (torch.cat([down, torch.zeros(extra, *down.shape[1:])]),
            torch.cat([up, torch.zeros(up.shape[0], extra, *up.shape[2:])], dim=1))  # fmt: skip


def write(out: Path, modules: dict, rest: dict, adapter: dict, overwrite: bool) -> Path:
    """modules (each of scale 1: alpha = its rank) in diffusers' layout, with peft's config per
    component (rank and alpha uniform, the target modules those written)."""
    from safetensors.torch import save_file

    if out.exists() and not overwrite:
        raise UserError(f"OUT {out}: exists; pass --overwrite to replace it")
    state = dict(rest)
    meta = dict(adapter)
    for name, (down, up, scale) in modules.items():
        if abs(scale - 1.0) > 1e-12:
            up = up * scale
        state[f"{name}.lora_A.weight"] = down.contiguous()
        state[f"{name}.lora_B.weight"] = up.contiguous()
    for component in {name.split(".")[0] for name in modules}:
        ranks = {d.shape[0] for n, (d, _, _) in modules.items() if n.split(".")[0] == component}
        (rank,) = ranks  # merge and resize give every module of a component one rank
        # peft's target names, as our runs write them (to_q, to_out.0); a module they match that the file
        # does not hold gets an adapter whose product is zero
        targets = sorted({_leaf(n) for n in modules if n.split(".")[0] == component})
        meta |= {f"{component}.r": rank, f"{component}.lora_alpha": float(rank), f"{component}.rank_pattern": {},
                 f"{component}.alpha_pattern": {}, f"{component}.target_modules": targets,
                 f"{component}.use_rslora": False}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    return out


def _leaf(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def run_resize(cfg) -> Path:
    modules, rest, adapter, path = read(cfg.lora, "LORA")
    top = max(d.shape[0] for d, _, _ in modules.values())
    if cfg.rank > top:
        raise UserError(f"--rank {cfg.rank}: the LoRA's rank is {top}; resize lowers it")
    out, lines = {}, []
    for name, (down, up, scale) in modules.items():
        d, u, kept = resize_module(down, up, scale, cfg.rank)
        out[name] = (d, u, 1.0)
        lines.append(f"{kept * 100:6.2f} %  {name}")
    shares = [float(line.split("%")[0]) for line in lines]
    print(f"rank {top} -> {cfg.rank}: share of each layer's Frobenius norm kept")
    print("\n".join(lines))
    print(f"{min(shares):.2f} % at least, {sum(shares) / len(shares):.2f} % on average, over {len(shares)} layers")
    return write(Path(cfg.out), out, rest, adapter, cfg.overwrite)


def run_merge(cfg) -> Path:
    if len(cfg.loras) < 2:
        raise UserError("LORA: give two or more LoRAs to merge")
    weights = cfg.weights or [1.0] * len(cfg.loras)
    if len(weights) != len(cfg.loras):
        raise UserError(f"--weights {','.join(map(str, weights))}: {len(weights)} weights for {len(cfg.loras)} LoRAs")
    read_in = [read(lora, lora) for lora in cfg.loras]
    _same_base([r[2] for r in read_in], [r[3] for r in read_in], cfg.loras)
    merged = merge_modules([r[0] for r in read_in], weights, cfg.loras)
    if cfg.rank:
        merged = {n: (*resize_module(d, u, s, cfg.rank)[:2], 1.0) for n, (d, u, s) in merged.items()}
    adapter = {}
    for r in read_in:
        adapter |= r[2]
    rest = {k: v for r in read_in for k, v in r[1].items()}
    return write(Path(cfg.out), merged, rest, adapter, cfg.overwrite)


def _same_base(adapters: list[dict], paths: list[str], names: list[str]) -> None:
    """LoRAs trained on different base models cannot merge: the --model of the run each belongs to, and
    the base model peft records per component, must agree."""
    from .formats.kohya import run_config

    seen: dict[str, tuple[str, str]] = {}
    for adapter, path, name in zip(adapters, paths, names):
        run = run_config(Path(path)) or {}
        pairs = [(k, v) for k, v in adapter.items() if k.endswith(".base_model_name_or_path")]
        for key, value in [("run.model", run.get("model")), *pairs]:
            if not value:
                continue
            component = key.split(".")[0]
            if component in seen and seen[component][0] != value:
                raise UserError(
                    f"{name}: trained on {value}, and {seen[component][1]} on {seen[component][0]}: LoRAs of "
                    "different base models do not merge"
                )
            seen.setdefault(component, (value, name))


def run_bake(cfg) -> Path:
    import torch

    from .formats.loading import load_lora_into
    from .io import atomic_dir
    from .models import check_model, family_of, load_pipeline
    from .weights import lora_file

    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise UserError(f"OUT {out}: exists; pass --overwrite to replace it")
    check_model(cfg.model)
    path = lora_file(cfg.lora, "--lora")
    family = family_of(cfg.model)
    pipe = load_pipeline(cfg.model)
    load_lora_into(pipe, family, cfg.model, path, "baked", "--lora")
    pipe.fuse_lora(lora_scale=cfg.scale)
    pipe.unload_lora_weights()  # the fused weights stay
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        from .formats.singlefile import single_file_state

        try:
            state = single_file_state(pipe, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[cfg.dtype])
        except ValueError as e:
            raise UserError(f"OUT {out}: {e}; give a folder to write a diffusers folder") from None
        with atomic_path(out) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        return out
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out


def run_extract(cfg) -> Path:
    import torch

    from .models import check_model, family_of, load_pipeline

    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise UserError(f"OUT {out}: exists; pass --overwrite to replace it")
    for flag, model in (("--base", cfg.base), ("--tuned", cfg.tuned)):
        check_model(model, flag=flag)
    family = family_of(cfg.base)
    if family_of(cfg.tuned).name != family.name:
        raise UserError(f"--tuned {cfg.tuned}: a {family_of(cfg.tuned).label} model, and --base is {family.label}")
    base, tuned = load_pipeline(cfg.base), load_pipeline(cfg.tuned)
    modules, lines = {}, []
    from .formats.lora import text_encoder_prefix

    for component in (family.denoiser, *family.trainable_text_encoders):
        a, b = dict(getattr(base, component).named_modules()), dict(getattr(tuned, component).named_modules())
        prefix = "" if component == family.denoiser else text_encoder_prefix(getattr(base, component))
        for name, module in a.items():
            other = b.get(name)
            if type(module) is not torch.nn.Linear or other is None:
                continue
            if other.weight.shape != module.weight.shape:
                raise UserError(f"--tuned {cfg.tuned}: {component}.{name} is {tuple(other.weight.shape)}, and "
                                f"{tuple(module.weight.shape)} in --base: not a fine-tune of it")  # fmt: skip
            change = other.weight.detach().float() - module.weight.detach().float()
            if float(change.abs().max()) <= cfg.threshold * float(module.weight.detach().float().abs().max()):
                continue
            down, up, kept = low_rank(change, cfg.rank)
            modules[f"{component}.{prefix}{name}"] = (down, up, 1.0)
            lines.append(f"{kept * 100:6.2f} %  {component}.{prefix}{name}")
    if not modules:
        raise UserError(f"--tuned {cfg.tuned}: no linear layer differs from --base {cfg.base}")
    print(f"rank {cfg.rank}: share of each changed layer's Frobenius norm kept")
    print("\n".join(lines))
    adapter = {f"{c}.peft_type": "LORA" for c in {n.split(".")[0] for n in modules}}
    return write(out, modules, {}, adapter, cfg.overwrite)
