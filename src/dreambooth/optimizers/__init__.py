"""Optimizers, registered by name (`--optimizer`): adding one is a module here and one entry below.
Each answers for itself: its library, its own options, its learning rate, how it is built and what it
needs around training (schedule-free AdamW's evaluation mode)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .adafactor import Adafactor
from .adamw import AdamW, AdamW8bit
from .base import Optimizer
from .prodigy import Prodigy, ProdigyOptions
from .schedule_free import ScheduleFreeAdamW

if TYPE_CHECKING:
    from ..config import TrainConfig

OPTIMIZERS: dict[str, type[Optimizer]] = {o.name: o for o in (AdamW, AdamW8bit, Prodigy, Adafactor, ScheduleFreeAdamW)}


def get_optimizer(cfg: TrainConfig) -> Optimizer:
    return OPTIMIZERS[cfg.optimizer](cfg)


__all__ = ["OPTIMIZERS", "Optimizer", "ProdigyOptions", "get_optimizer"]
