"""How AUTOMATIC1111 identifies a LoRA file, and finding one the way it does: its short hash (the
first 12 hex digits of the SHA-256 of a .safetensors file's tensor data; extensions-builtin/Lora/
network.py, modules/hashes.py), of the kohya file a LoRA is used as there."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .kohya import kohya_tensors, run_config
from .lora import is_kohya, read_lora


def a1111_lora_hash(lora: Path) -> str | None:
    """AUTOMATIC1111's short hash (weights.addnet_hash, 12 hex digits) of the kohya file a LoRA is used
    as there: the file itself when it is in kohya's layout, else the kohya file beside it (training's
    --save-format both), else the file `dreambooth export` makes of it (computed, not written); None
    where none can be made here (a DoRA LoRA without its kohya file; an SDXL LoRA without its run)."""
    from safetensors.torch import save

    from ..weights import addnet_hash

    lora = Path(lora)
    state, _, _ = read_lora(lora)
    if is_kohya(state):
        return addnet_hash(lora)[:12]
    beside = kohya_beside(lora)
    if beside is not None:
        return addnet_hash(beside)[:12]
    if any("lora_magnitude_vector" in k for k in state):
        return None  # its kohya file depends on the program it is for, and needs the base weights
    try:
        tensors, metadata = kohya_tensors(lora, run_config(lora), lora.stem)
    except UserError:
        return None
    return addnet_hash(save(tensors, metadata={"format": "pt", **metadata}))[:12]


def kohya_beside(lora: Path) -> Path | None:
    """The kohya file training wrote beside a diffusers-format LoRA file (--save-format both), if one."""
    from safetensors import safe_open

    from ..weights import NOT_LORA

    others = [p for p in lora.parent.glob("*.safetensors") if p.name not in NOT_LORA and p != lora]
    if len(others) != 1:
        return None
    try:
        with safe_open(str(others[0]), "pt") as f:
            return others[0] if is_kohya(dict.fromkeys(f.keys())) else None
    except Exception:  # unreadable: not the file
        return None


def find_a1111_lora(folder: Path, name: str, short_hash: str | None) -> Path | None:
    """The LoRA an AUTOMATIC1111 prompt tag <lora:NAME:...> names, in folder: by its hash (as
    AUTOMATIC1111 finds a pasted LoRA), else by name (a NAME.safetensors file or a run folder NAME)."""
    from ..weights import lora_file

    def weights(p: Path) -> Path | None:
        try:
            return lora_file(p)
        except UserError:
            return None

    if not folder.is_dir():
        return None
    candidates = sorted(folder.glob("*.safetensors")) + sorted(p for p in folder.iterdir() if p.is_dir())
    by_name = [p for p in candidates if p.stem == name or p.name == name]
    if short_hash:
        for p in by_name + [p for p in candidates if p not in by_name]:
            w = weights(p) if p.is_dir() else p
            try:
                if w is not None and a1111_lora_hash(w) == short_hash.lower():
                    return p
            except UserError:
                continue
    return by_name[0] if by_name and weights(by_name[0]) is not None else None
