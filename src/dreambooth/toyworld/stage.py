"""What every pretraining stage shares: its cosine schedule, optimizer step, progress bar, and a
checkpoint (models, optimizer, schedule, step) it resumes from."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..io import atomic_path
from ..training.checkpoint import flatten_state, unflatten_state

log = logging.getLogger(__name__)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def cosine(opt, warmup: int, steps: int):
    """Linear warmup, then a cosine decay to zero at `steps`."""
    return get_scheduler("cosine", opt, num_warmup_steps=warmup, num_training_steps=steps)


def progress(start: int, steps: int, desc: str):
    """The steps from `start` (where a resumed stage stands) to `steps`, with a progress bar."""
    return tqdm(range(start, steps), initial=start, total=steps, desc=desc, mininterval=5)


def optimizer_step(opt, lr, loss: torch.Tensor, clip: list | None = None) -> None:
    """Backward, clip the gradient norm of `clip` to 1 if given, step the optimizer and the schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    lr.step()


def due(step: int, steps: int, every: int = 250) -> bool:
    """Whether to report and checkpoint after `step` (0-based): every `every` steps and at the end."""
    return (step + 1) % every == 0 or step + 1 == steps


def save_state(path: Path, state: dict) -> None:
    """A stage's checkpoint as one safetensors file (the nesting in its metadata), renamed into place."""
    tensors: dict = {}
    skeleton = flatten_state(state, tensors)
    seen: set[int] = set()
    for key, t in tensors.items():  # tied weights (T5's shared embedding) are saved twice
        if t.data_ptr() in seen:
            tensors[key] = t.clone()
        seen.add(t.data_ptr())
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"skeleton": json.dumps(skeleton)})


def load_state(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        skeleton = json.loads(f.metadata()["skeleton"])
    return unflatten_state(skeleton, load_file(path))


def save_checkpoint(ckpt: Path, modules: dict, opt, lr, step: int) -> None:
    """The models' (by name), optimizer's and schedule's state after `step` steps."""
    state = {name: module.state_dict() for name, module in modules.items()}
    save_state(ckpt, {**state, "opt": opt.state_dict(), "lr": lr.state_dict(), "step": step})


def resume(ckpt: Path, modules: dict, opt, lr) -> int:
    """Load a stage's checkpoint (models, optimizer, schedule) if there is one; the step to start from."""
    if not ckpt.exists():
        return 0
    state = load_state(ckpt)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    opt.load_state_dict(state["opt"])
    lr.load_state_dict(state["lr"])
    return state["step"]


def train_stage(name: str, ckpt: Path, modules: dict, opt, lr, steps: int, seed: int, loss_of) -> None:
    """A stage's loop: resume from ckpt, then for each step the loss of `loss_of(generator)` (seeded with
    seed + step, so a resumed stage draws what an uninterrupted one would), an optimizer step with the
    modules' gradient norm clipped to 1, a report and a checkpoint when due."""
    params = [p for m in modules.values() for p in m.parameters()]
    start = resume(ckpt, modules, opt, lr)
    t0 = time.time()
    bar = progress(start, steps, name)
    for step in bar:
        loss = loss_of(torch.Generator().manual_seed(seed + step))
        optimizer_step(opt, lr, loss, clip=params)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if due(step, steps):
            seconds = (time.time() - t0) / (step + 1 - start)
            log.info("%s step %d/%d loss %.4f (%.2f s/step)", name, step + 1, steps, loss.item(), seconds)
            save_checkpoint(ckpt, modules, opt, lr, step + 1)
