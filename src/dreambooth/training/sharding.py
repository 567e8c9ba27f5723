"""`--fsdp`: what trains is sharded across the processes with torch's FSDP2 (`fully_shard`), so that a
model whose weights, gradients and optimizer states do not fit one GPU (full fine-tuning of a
12-billion-parameter transformer) trains on several.

Each of the denoiser's blocks the family names (`Family.shard_blocks`) is one FSDP unit, then the
denoiser itself; a text encoder that trains is one unit. Each process keeps 1/N of every parameter,
gradient and Adam moment; a block's weights are gathered for its forward and backward and freed after.
The optimizer is made after sharding, over the sharded parameters. Mixed precision is torch's autocast
around the forward, as accelerate applies it without FSDP, so the trained weights stay fp32.

Checkpoints: each process writes its shards of the trained parameters and optimizer states with
torch.distributed.checkpoint into the checkpoint's `sharded/` folder (frozen weights are not written:
they come from the base model), and resuming loads them back into the same sharding: the run continues
exactly. The user-facing weights (LoRA file, or the full model) are gathered, trained tensor by trained
tensor, onto the main process and written as by a run without FSDP: one ordinary file or folder.

accelerate's FSDP plugin is not used: it enables FSDP only on GPUs (on a CPU it silently falls back
to DDP, so the tests, 2 gloo processes, would not shard), and its FSDP1 path resumes optimizer states
and offloads with bugs we hit; FSDP2 is the one torch develops.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SHARDED_DIR = "sharded"  # in a checkpoint folder: each process's shards (torch.distributed.checkpoint)


def trained_modules(comps) -> dict[str, torch.nn.Module]:
    """The components with a parameter that trains, by pipeline attribute (denoiser first)."""
    names = (comps.family.denoiser, *comps.family.text_encoders)
    return {n: comps.module(n) for n in names if any(p.requires_grad for p in comps.module(n).parameters())}


def shard(comps, groups: list[dict], accelerator) -> list[dict]:
    """Shard what trains across the processes; the optimizer's parameter groups over the sharded
    parameters (fully_shard replaces each parameter by its shard, a DTensor)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    modules = trained_modules(comps)
    where = {}  # id(parameter) -> (component, parameter name), to find it again after sharding
    for comp, module in modules.items():
        for name, p in module.named_parameters():
            where[id(p)] = (comp, name)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for comp, module in modules.items():
        if comp == comps.family.denoiser:
            for block in _blocks(module, comps.family.shard_blocks):
                fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
    params = {(comp, name): p for comp, module in modules.items() for name, p in module.named_parameters()}
    units = sum(isinstance(sub, FSDPModule) for m in modules.values() for sub in m.modules())
    log.info("--fsdp: %d FSDP units over %d processes", units, accelerator.num_processes)
    return [{**g, "params": [params[where[id(p)]] for p in g["params"]]} for g in groups]


def _blocks(module, paths: tuple[str, ...]) -> list[torch.nn.Module]:
    """The blocks named by paths: each module of a ModuleList, or the module itself."""
    out = []
    for path in paths:
        part = getattr(module, path, None)  # (a UNet may have no mid block)
        if part is not None:
            out.extend(part if isinstance(part, torch.nn.ModuleList) else [part])
    return out


def autocast(modules, accelerator) -> None:
    """Mixed precision as accelerate applies it to a model it prepares: the forward under autocast,
    outputs back in fp32."""
    from accelerate.utils import convert_outputs_to_fp32

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    if dtype is None:
        return
    for m in modules:
        m.forward = convert_outputs_to_fp32(torch.autocast(accelerator.device.type, dtype=dtype)(m.forward))


def full_tensor(x):
    """A DTensor's whole value (a collective: every process calls it), anything else as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


@contextlib.contextmanager
def gathered(comps, main: bool):
    """Every trained parameter's whole value on the main process, in place of its shard, for the
    duration (every process takes part in the gathering; the others keep their shards); the method's
    state_dict and save then write what a run without FSDP writes."""
    from torch.distributed.fsdp import FSDPModule

    swapped = []
    for module in trained_modules(comps).values():
        for unit in module.modules():  # a forward without backward (validation) leaves the root unsharded
            if isinstance(unit, FSDPModule):
                unit.reshard()
        for name, p in list(module.named_parameters()):
            if not p.requires_grad:
                continue
            whole = full_tensor(p.detach()).to("cpu", copy=True)
            if main:
                owner_name, _, attr = name.rpartition(".")
                owner = module.get_submodule(owner_name)
                swapped.append((owner, attr, owner._parameters[attr]))
                owner._parameters[attr] = torch.nn.Parameter(whole, requires_grad=True)
    try:
        yield
    finally:
        for owner, attr, p in swapped:
            owner._parameters[attr] = p


def _container(comps) -> torch.nn.Module:
    return torch.nn.ModuleDict(trained_modules(comps))


def _options(strict: bool = True):
    """The trained tensors only (frozen ones come from the base model). Loading them back is not
    strict about the frozen ones; dcp.load has already failed if a trained one was missing."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def save(comps, optimizer, folder: Path) -> None:
    """Each process's shards of the trained parameters and their optimizer states into folder (every
    process calls it; torch.distributed.checkpoint writes one file per process and the metadata)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)  # (accelerate's wrapper)
    model_state, optim_state = get_state_dict(_container(comps), optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def load(comps, optimizer, folder: Path) -> None:
    """The shards save wrote, back into the same sharding (every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    container = _container(comps)
    model_state, optim_state = get_state_dict(container, optimizer, options=_options())
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(container, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(strict=False))  # fmt: skip
