"""Training on several processes: one per GPU, or gloo processes on a CPU (how the tests check it).

`dreambooth train --num-processes N` starts N copies of itself on this machine with the environment
torch.distributed reads (RANK, WORLD_SIZE, MASTER_ADDR, ...), as torchrun does; `accelerate launch
-m dreambooth train ...` and `torchrun -m dreambooth train ...` (several machines too) set the same
variables and reach the same code. Every process sees the whole data set and draws the random numbers
of the whole global batch (batch size x processes), keeping its own slice, so N processes with batch b
train on exactly the examples, noise and timesteps of one process with batch N x b; accelerate's DDP
averages the gradients. Files are written by the main process only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from .. import children

log = logging.getLogger(__name__)

# Variables that make a process one of a group (set by us, torchrun, accelerate launch or MPI).
_GROUP_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
LAUNCHED_VAR = "DREAMBOOTH_LAUNCHED"  # set in the processes `launch` starts


def world_size_from_env() -> int:
    """Processes in the group this process was started in (1 when started alone); no torch import."""
    for var in _GROUP_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def rank_from_env() -> int:
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def in_group() -> bool:
    return world_size_from_env() > 1


def use_cpu() -> bool:
    """A group without CUDA runs gloo on the CPU (accelerate needs to be told: it would otherwise run
    each process alone)."""
    import torch

    return in_group() and not torch.cuda.is_available()


def state():
    """accelerate's process state (joins the process group when started in one)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], n: int, grace_s: float = 60.0) -> int:
    """Run `python -m dreambooth ARGS` in n processes of one group on this machine; their exit code, as
    Popen gives it (-N for a process killed by signal N; the CLI then exits with 128 + N).

    Ctrl-C and SIGTERM reach every process once (each stops at the same step: the main process saves
    a checkpoint). A process that fails leaves the others waiting on it in a collective, so they are
    stopped after grace_s. Each process gets an equal share of the CPU cores (OMP_NUM_THREADS)
    unless the variable is set."""
    base = children.env_sharing_cores(n)
    base.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(n),
        LOCAL_WORLD_SIZE=str(n),
        **{LAUNCHED_VAR: "1"},
    )
    procs = [children.start(args, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(n)]
    with children.forward_signals(lambda: procs):
        failed_at = None
        while any(p.poll() is None for p in procs):
            codes = [p.returncode for p in procs if p.returncode is not None]
            if failed_at is None and any(c != 0 for c in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    codes = [p.returncode for p in procs]
    if codes[0] != 0:
        return codes[0]
    return next((c for c in codes if c != 0), 0)


def launch_train(cfg) -> int:
    """`dreambooth train` with cfg.num_processes > 1, from a process started alone: check everything
    here (a bad input is one line, nothing started), then run the processes on the config written to a
    temporary file."""
    import tempfile

    from ..options import to_yaml
    from .preflight import preflight

    preflight(cfg)
    with tempfile.TemporaryDirectory(prefix="dreambooth-launch-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(to_yaml(cfg))
        log.info("training on %d processes", cfg.num_processes)
        return launch(["train", "--config", str(config)], cfg.num_processes)
