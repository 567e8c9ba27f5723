"""Training methods, registered by name: adding one is a module here and one entry below."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method
from .full import Full
from .lora import LoRA
from .textual_inversion import TextualInversion

if TYPE_CHECKING:
    from ..config import TrainConfig

METHODS: dict[str, type[Method]] = {m.name: m for m in (LoRA, Full, TextualInversion)}


def get_method(cfg: TrainConfig) -> Method:
    return METHODS[cfg.method](cfg)
