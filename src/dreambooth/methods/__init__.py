"""Training methods, registered by name."""

from __future__ import annotations

from ..config import TrainConfig
from .base import Method
from .lora import LoRA

METHODS: dict[str, type[Method]] = {LoRA.name: LoRA}


def get_method(cfg: TrainConfig) -> Method:
    return METHODS[cfg.method](cfg)
