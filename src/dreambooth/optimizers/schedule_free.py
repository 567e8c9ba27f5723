"""Schedule-free AdamW (Defazio et al., 2024; schedulefree): no learning-rate schedule (its own warmup
takes --lr-warmup-steps; --lr-scheduler is constant), and no need to know the number of steps in
advance. It trains one sequence of weights and evaluates an average of them: validation images,
checkpoints' weights and the final weights are the averaged ones, while the checkpoint's trainable
tensors (what resumes) are the training sequence's."""

from __future__ import annotations

import contextlib

from ..errors import UserError
from .base import Optimizer


class ScheduleFreeAdamW(Optimizer):
    name = "schedule-free-adamw"
    label = "schedule-free AdamW"
    package = "schedulefree"

    @classmethod
    def validate_options(cls, cfg) -> None:
        if cfg.lr_scheduler not in ("constant", "constant_with_warmup"):
            raise UserError(
                f"--lr-scheduler {cfg.lr_scheduler}: schedule-free AdamW takes no schedule (its warmup is "
                "--lr-warmup-steps); leave it out"
            )

    def schedule(self) -> tuple[str, int]:
        return "constant", 0  # the warmup is the optimizer's own

    def build(self, groups: list[dict]):
        from schedulefree import AdamWScheduleFree

        c = self.cfg
        return AdamWScheduleFree(groups, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon,
                                 weight_decay=c.adam_weight_decay, warmup_steps=c.warmup_steps)  # fmt: skip

    def start(self, optimizer) -> None:
        getattr(optimizer, "optimizer", optimizer).train()  # (accelerate's wrapper holds it)

    @contextlib.contextmanager
    def evaluating(self, optimizer):
        inner = getattr(optimizer, "optimizer", optimizer)
        inner.eval()
        try:
            yield
        finally:
            inner.train()
