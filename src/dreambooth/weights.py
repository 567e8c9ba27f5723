"""Finding and identifying trained weights: run folders, checkpoint folders, single files."""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

from .errors import UserError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# Other .safetensors files a run or checkpoint folder holds: the exact-resume state (training.checkpoint)
# and a pivotal run's embedding.
NOT_LORA = tuple(
    f"{name}.safetensors" for name in ("trainable", "learned_embeds", "optimizer", "scheduler", "rng", "ema")
)


def lora_file(path: str | Path, flag: str = "--lora") -> Path:
    """The weights file of a LoRA given as a run folder, a checkpoint folder or a file."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / LORA_WEIGHTS).is_file():
            return p / LORA_WEIGHTS
        # a run trained with --save-format kohya holds one RUN-NAME.safetensors instead
        others = [f for f in sorted(p.glob("*.safetensors")) if f.name not in NOT_LORA]
        if len(others) == 1:
            return check_diffusers_loads(others[0], flag)
        raise UserError(f"{flag} {path}: folder holds no {LORA_WEIGHTS}")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise UserError(f"{flag} {path}: not a .safetensors file")
        return check_diffusers_loads(p, flag)
    raise UserError(f"{flag} {path}: no such file or folder")


def check_diffusers_loads(path: Path, flag: str = "--lora") -> Path:
    """Refuse a LoRA file stock diffusers would load wrongly: a DoRA in kohya's layout (LyCORIS's
    dora_scale keys, which ComfyUI and AUTOMATIC1111 read) loses its magnitudes there, with a warning."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            dora = any(k.endswith("dora_scale") for k in f.keys())
            bundled = any(k.startswith("bundle_emb.") for k in f.keys())
    except Exception:  # unreadable: the loader says so
        return path
    if bundled and pivotal_embedding(path) is None:  # beside its run's embedding, generation loads both
        raise UserError(
            f"{flag} {path}: a LoRA with a bundled embedding (AUTOMATIC1111's bundle_emb, from pivotal tuning), "
            "which diffusers does not load; give its run folder (LoRA and learned_embeds.safetensors) instead"
        )
    if dora:
        raise UserError(
            f"{flag} {path}: a DoRA LoRA in kohya's layout (dora_scale), whose magnitudes diffusers drops; "
            f"use the run's {LORA_WEIGHTS} (its diffusers file) here, the kohya file in ComfyUI or AUTOMATIC1111"
        )
    return path


def pivotal_embedding(lora: Path) -> tuple[Path, str, str] | None:
    """(embedding file, identifier, token) of a pivotal-tuning LoRA (trained with
    --train-identifier-embedding: learned_embeds.safetensors beside it names both), else None."""
    from safetensors import safe_open

    path = Path(lora).parent / EMBEDDING
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    if not meta.get("identifier") or not meta.get("token"):
        return None  # a Textual Inversion run's embedding, not a pivot
    return path, meta["identifier"], meta["token"]


def replace_identifier(prompt: str, identifier: str, token: str) -> str:
    """The prompt with the identifier, as a word, replaced by the pivotal token (pure)."""
    return re.sub(rf"(?<![\w<>-]){re.escape(identifier)}(?![\w<>-])", token, prompt)


def lora_name(path: str | Path) -> str:
    """A short readable name: the run folder's name (with the checkpoint step) or the file's stem."""
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.name == LORA_WEIGHTS:
        p = p.parent
    if p.is_dir():
        if p.parent.name == "checkpoints":
            return f"{p.parent.parent.name}-{p.name}"
        return p.name
    return p.stem


def sha256(path: str | Path) -> str:
    """Hash of what a .safetensors file holds: its tensor data and its metadata, canonically.

    Not of its bytes: safetensors writes its metadata in an unspecified order, so the same weights
    saved twice can differ byte for byte. (The tensor data part alone is what AUTOMATIC1111 and
    kohya call the file's "addnet" hash.)
    """
    return _content_sha256(*_file_key(path))


def _file_key(path) -> tuple[str, int, int]:
    """(absolute path, size, modification time): a file's hash is kept while these stay the same."""
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def _rest_sha256(f, h=None) -> str:
    """The SHA-256 (or h updated) of what is left to read of f."""
    h = h or hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=256)
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise UserError(f"{path}: not a valid .safetensors file (its header is not JSON)") from None
        meta = header.pop("__metadata__", {}) or {}
        h.update(json.dumps(meta, sort_keys=True).encode())
        h.update(json.dumps(header, sort_keys=True).encode())
        return _rest_sha256(f, h)


def addnet_hash(data: bytes | str | Path) -> str:
    """AUTOMATIC1111's and kohya's hash of a .safetensors file (its bytes, or the file at that path): the
    SHA-256 of what follows the 8-byte header length and the JSON header, i.e. the tensor data alone
    (modules/hashes.py addnet_hash_safetensors). AUTOMATIC1111 names LoRAs by its first 12 hex digits."""
    if isinstance(data, bytes):
        n = int.from_bytes(data[:8], "little")
        return hashlib.sha256(data[8 + n :]).hexdigest()
    return _addnet_file(*_file_key(data))


@lru_cache(maxsize=256)
def _addnet_file(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        return _rest_sha256(f)


def a1111_model_hash(model: str) -> str | None:
    """AUTOMATIC1111's "Model hash" of a single-file checkpoint: the first 10 hex digits of the SHA-256
    of the whole file (sd_models.CheckpointInfo.shorthash); None for a folder or hub id."""
    p = Path(model).expanduser()
    if not p.is_file():
        return None
    return _file_sha256(*_file_key(p))[:10]


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return _rest_sha256(f)


def model_name(model: str) -> str:
    """A base model's name as AUTOMATIC1111 writes it ("Model"): a file's or folder's name without its
    suffix, a hub id or built-in name as it is."""
    p = Path(model).expanduser()
    return p.stem if p.is_file() else (p.resolve().name if p.is_dir() else model)


def model_identity(model: str) -> str:
    """What names a base model in settings and cache keys: a local folder's absolute path, a built-in
    model's name, or the hub id."""
    from .models import builtin_path

    if builtin_path(model) is not None:
        return model
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


EMBEDDING = "learned_embeds.safetensors"


def embedding_file(path: str | Path, flag: str = "--embedding") -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / EMBEDDING).is_file():
            return p / EMBEDDING
        raise UserError(f"{flag} {path}: folder holds no {EMBEDDING}")
    if p.is_file() and p.suffix == ".safetensors":
        return p
    raise UserError(f"{flag} {path}: no such .safetensors file or folder")
