"""AdamW (Loshchilov & Hutter, 2019), torch's; and bitsandbytes' 8-bit AdamW (Dettmers et al., 2022),
whose two moments take 2 bytes per parameter instead of 8 (CUDA)."""

from __future__ import annotations

from .base import Optimizer


class AdamW(Optimizer):
    name = "adamw"
    label = "AdamW"
    shards = True

    def build(self, groups: list[dict]):
        import torch

        return torch.optim.AdamW(groups, **self.adam_kwargs())


class AdamW8bit(Optimizer):
    name = "adamw8bit"
    label = "8-bit AdamW"
    package = "bitsandbytes"
    cuda_only = True
    alias_option = "adam_8bit"  # --adam-8bit, diffusers' scripts' --use_8bit_adam

    @property
    def flag(self) -> str:
        return "--adam-8bit" if getattr(self.cfg, self.alias_option) else super().flag

    def build(self, groups: list[dict]):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **self.adam_kwargs())
