"""`--report-to tensorboard | wandb | all`: experiment trackers through accelerate's (config, losses,
learning rate, validation loss and images). Weights & Biases logs offline, into OUTPUT/logs/wandb,
unless this machine is logged in (WANDB_API_KEY or `wandb login`) or WANDB_MODE says otherwise: nothing
leaves the machine unasked; `wandb sync OUTPUT/logs/wandb/offline-run-*` uploads a run later."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

TRACKERS = {"none": (), "tensorboard": ("tensorboard",), "wandb": ("wandb",), "all": ("tensorboard", "wandb")}


def names(report_to: str) -> tuple[str, ...]:
    return TRACKERS[report_to]


def check(report_to: str) -> None:
    for name in names(report_to):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--report-to {report_to}: needs the {name} package (pip install {name})")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def init_kwargs(report_to: str, output_dir: str) -> dict:
    """Each tracker's own start-up arguments: W&B's run name, its folder and (not logged in) offline mode."""
    if "wandb" not in names(report_to):
        return {}
    folder = Path(output_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"name": Path(output_dir).name, "dir": str(folder)}
    if "WANDB_MODE" not in os.environ and not _wandb_logged_in():
        kw["mode"] = "offline"
        log.info("wandb: not logged in; logging offline to %s (upload later with wandb sync)", folder / "wandb")
    return {"wandb": kw}


def log_images(accelerator, report_to: str, key: str, images: list, step: int) -> None:
    """Validation images to every tracker that takes images."""
    import numpy as np

    for name in names(report_to):
        tracker = accelerator.get_tracker(name)
        if name == "tensorboard":
            tracker.log_images({key: np.stack([np.asarray(im) for im in images])}, step, dataformats="NHWC")
        else:
            tracker.log_images({key: images}, step)
