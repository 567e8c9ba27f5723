"""Resumable checkpoints: OUTPUT/checkpoints/step-N/, written to a temporary folder and renamed into
place, with a completion marker written last; a folder without the marker does not count."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

from ..io import atomic_dir

MARKER = "checkpoint_complete"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def rng_state() -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": np_state[2],
            "has_gauss": np_state[3],
            "cached_gaussian": np_state[4],
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir, step: int, method, comps, optimizer, lr_scheduler, extra: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    path = checkpoints_dir(output_dir) / f"step-{step}"
    with atomic_dir(path) as tmp:
        save_file(method.state_dict(comps), tmp / "trainable.safetensors")
        method.save(comps, tmp)  # the user-facing weights, so any checkpoint can generate
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        (tmp / MARKER).write_text("")
    return path


def load_checkpoint(path: str | Path) -> dict:
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    return {
        "trainable": load_file(path / "trainable.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
        "rng": torch.load(path / "rng.pt", weights_only=True),
        "state": json.loads((path / "state.json").read_text()),
    }


def checkpoint_step(path: str | Path) -> int:
    return int(json.loads((Path(path) / "state.json").read_text())["step"])


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
