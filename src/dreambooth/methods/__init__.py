"""Training methods, registered by name."""

from __future__ import annotations

from ..config import TrainConfig
from .base import Method
from .full import Full
from .lora import LoRA
from .textual_inversion import TextualInversion

METHODS: dict[str, type[Method]] = {m.name: m for m in (LoRA, Full, TextualInversion)}


def get_method(cfg: TrainConfig) -> Method:
    return METHODS[cfg.method](cfg)
