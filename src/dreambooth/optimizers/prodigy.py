"""Prodigy (Mishchenko & Defazio, 2024; prodigyopt): Adam whose step size D is estimated as training
goes, so the learning rate is a multiplier of it, 1.0 (as kohya's trainers and diffusers' advanced
DreamBooth script use it). For people who do not want to tune the learning rate."""

from __future__ import annotations

import dataclasses

from ..options import option
from .base import Optimizer

LOW = 0.1  # below this, a multiplier of Prodigy's own step size means almost no training


@dataclasses.dataclass
class ProdigyOptions:
    prodigy_d_coef: float = option(1.0, "Prodigy: multiplier of the estimated step size D", gt=0)
    prodigy_safeguard_warmup: bool = option(
        True, "Prodigy: leave the learning rate out of D's estimate during warmup (keeps D from growing too fast)"
    )
    prodigy_bias_correction: bool = option(True, "Prodigy: Adam's bias correction of the moments")


class Prodigy(Optimizer):
    name = "prodigy"
    label = "Prodigy"
    options = ProdigyOptions
    package = "prodigyopt"
    default_learning_rate = 1.0

    @classmethod
    def learning_rate_warning(cls, cfg) -> str | None:
        rates = {"--learning-rate": cfg.learning_rate}
        if cfg.train_text_encoder:
            rates["--text-encoder-lr"] = cfg.text_encoder_lr
        low = {flag: lr for flag, lr in rates.items() if lr < LOW}
        if not low:
            return None
        flag, lr = next(iter(low.items()))
        return (
            f"{flag} {lr:g} with --optimizer prodigy: Prodigy estimates the step size itself and the learning "
            f"rate multiplies it (use 1.0, and --prodigy-d-coef to scale it); at {lr:g} it barely trains"
        )

    def build(self, groups: list[dict]):
        from prodigyopt import Prodigy as ProdigyOpt

        c = self.cfg
        return ProdigyOpt(groups, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon,
                          weight_decay=c.adam_weight_decay, d_coef=c.prodigy_d_coef,
                          safeguard_warmup=c.prodigy_safeguard_warmup,
                          use_bias_correction=c.prodigy_bias_correction)  # fmt: skip
