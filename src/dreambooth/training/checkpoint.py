"""Resumable checkpoints: OUTPUT/checkpoints/step-N/ (runs.py names the layout), written to a temporary
folder and renamed into place, with a completion marker written last; a folder without the marker does
not count."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
from pathlib import Path

from ..io import atomic_dir
from ..runs import EMA_DIR, MARKER, checkpoints_dir, list_checkpoints

log = logging.getLogger(__name__)


def flatten_state(obj, tensors: dict, prefix: str = "t"):
    """A JSON-able skeleton of a nested state (dicts with int or str keys, lists, tuples, numbers,
    strings, tensors) whose tensors move into `tensors` under generated names (pure apart from filling
    tensors). The optimizer's, scheduler's and RNG states are stored this way: safetensors and JSON,
    no pickle."""
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [flatten_state(v, tensors, prefix) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint without pickle")


def unflatten_state(skeleton, tensors: dict):
    """The inverse of flatten_state (pure)."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
    return skeleton


def _write_state(folder: Path, name: str, obj) -> None:
    from safetensors.torch import save_file

    tensors: dict = {}
    skeleton = flatten_state(obj, tensors)
    save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def _read_state(folder: Path, name: str):
    if not (folder / f"{name}.json").is_file():  # a checkpoint of an earlier version: torch's safe loader
        import torch

        return torch.load(folder / f"{name}.pt", weights_only=True)
    from safetensors.torch import load_file

    return unflatten_state(json.loads((folder / f"{name}.json").read_text()), load_file(folder / f"{name}.safetensors"))


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


def save_checkpoint(
    output_dir,
    step: int,
    method,
    comps,
    optimizer,
    lr_scheduler,
    extra: dict,
    ema=None,
    ema_save=None,
    sharded=None,
    evaluating=contextlib.nullcontext,
) -> Path:
    """ema: the EMA's state (diffusers' EMAModel) and ema_save(folder), which writes its user-facing weights.
    sharded: with --fsdp, the folder where every process wrote its shards of the trained tensors and the
    optimizer's states (sharding.save); it moves into the checkpoint, which then holds no optimizer file.
    evaluating: a context in which the parameters hold the weights to save for use (schedule-free
    AdamW's average); what resumes is saved outside it."""
    from safetensors.torch import save_file

    path = checkpoints_dir(output_dir) / f"step-{step}"
    with atomic_dir(path) as tmp:
        # What resumes exactly comes first; the user-facing weights (so any checkpoint can generate) must
        # not cost the checkpoint when one of their files cannot be written.
        if sharded is not None:
            from .sharding import SHARDED_DIR

            Path(sharded).replace(tmp / SHARDED_DIR)
        save_file(method.state_dict(comps), tmp / "trainable.safetensors")
        if ema is not None:
            _write_state(tmp, "ema", ema.state_dict())
        if sharded is None:
            _write_state(tmp, "optimizer", optimizer.state_dict())
        _write_state(tmp, "scheduler", lr_scheduler.state_dict())
        _write_state(tmp, "rng", rng_state())
        with evaluating():
            _, unsaved = save_weights(method.save, comps, tmp)
            if ema is not None:
                unsaved += save_weights(lambda _, folder: ema_save(folder), comps, tmp / EMA_DIR)[1]
        for problem in unsaved:
            log.warning("checkpoint step-%d: could not write %s", step, problem)
        state = {"step": step, **extra, **({"unsaved": unsaved} if unsaved else {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        (tmp / MARKER).write_text("")
    return path


def save_weights(save, comps, folder: Path) -> tuple[list[Path], list[str]]:
    """(files written, what could not be and why) of save(comps, folder), a method's save: a failure
    is reported, not raised, so that what could be written stays on disk."""
    from ..errors import Unsaved

    try:
        return list(save(comps, folder)), []
    except Unsaved as e:
        return e.written, e.problems
    except Exception as e:  # any failure: the trained tensors are in trainable.safetensors
        return [], [f"the weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"]


def load_checkpoint(path: str | Path) -> dict:
    from safetensors.torch import load_file

    path = Path(path)
    return {
        "trainable": load_file(path / "trainable.safetensors"),
        # (none with --fsdp: each process's shards of it are in sharded/)
        "optimizer": _read_state(path, "optimizer")
        if (path / "optimizer.json").is_file() or (path / "optimizer.pt").is_file()
        else None,
        "scheduler": _read_state(path, "scheduler"),
        "rng": _read_state(path, "rng"),
        "ema": _read_state(path, "ema") if (path / "ema.json").is_file() else None,
        "state": json.loads((path / "state.json").read_text()),
    }


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
