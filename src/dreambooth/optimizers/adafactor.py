"""Adafactor (Shazeer & Stern, 2018; transformers'): the second moment factored into a row and a
column per weight matrix and no first moment, so its state is a few bytes per row instead of Adam's 8
per weight: for full fine-tuning on a small card. Used with an explicit learning rate (relative_step
off), as kohya's trainers use it for fine-tuning."""

from __future__ import annotations

from .base import Optimizer


class Adafactor(Optimizer):
    name = "adafactor"
    label = "Adafactor"

    def build(self, groups: list[dict]):
        from transformers.optimization import Adafactor as AdafactorOpt

        return AdafactorOpt(groups, lr=groups[0]["lr"], scale_parameter=False, relative_step=False,
                            warmup_init=False, weight_decay=self.cfg.adam_weight_decay)  # fmt: skip
