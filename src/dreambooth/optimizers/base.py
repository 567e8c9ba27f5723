"""What every optimizer answers (see __init__ for the registry)."""

from __future__ import annotations

import contextlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..options import NoOptions, refuse_others_options

if TYPE_CHECKING:
    from ..config import TrainConfig


class Optimizer:
    name = "base"
    label = "base"  # in sentences: "--prodigy-d-coef: a Prodigy setting"
    options: type = NoOptions  # the dataclass of its own fields (TrainConfig includes them)
    package: str | None = None  # the module it needs (one line when missing)
    cuda_only = False
    default_learning_rate: float | None = None  # None: the method's
    shards = False  # --fsdp can shard its states (torch.distributed.checkpoint, exact resume)
    alias_option: str | None = None  # a TrainConfig flag that chooses it too (the name it had first)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    # -- options, before anything is read -------------------------------------------------------------
    @classmethod
    def refuse_options_of_others(cls, cfg: TrainConfig, others: list[type[Optimizer]]) -> None:
        """Another optimizer's option set away from its default is refused, naming it."""
        refuse_others_options(cfg, others, "label", f"--optimizer is {cls.name}")

    @classmethod
    def validate_options(cls, cfg: TrainConfig) -> None:
        """The optimizer's checks of the config that need several fields."""

    @classmethod
    def learning_rate_warning(cls, cfg: TrainConfig) -> str | None:
        """Why the learning rates make no sense for this optimizer (a warning, not a refusal), or None."""
        return None

    @property
    def flag(self) -> str:
        """How the user chose it, for messages."""
        return f"--optimizer {self.name}"

    def check(self) -> None:
        """What this machine cannot run, one line."""
        if self.package and importlib.util.find_spec(self.package) is None:
            raise UserError(f"{self.flag}: needs the {self.package} package (pip install {self.package})")
        if self.cuda_only:
            import torch

            if not torch.cuda.is_available():
                raise UserError(f"{self.flag}: needs a CUDA GPU, and none is available (use adamw)")

    # -- training ------------------------------------------------------------------------------------
    def adam_kwargs(self) -> dict[str, Any]:
        c = self.cfg
        return dict(betas=(c.adam_beta1, c.adam_beta2), weight_decay=c.adam_weight_decay, eps=c.adam_epsilon)

    def schedule(self) -> tuple[str, int]:
        """The learning-rate schedule around it (diffusers' get_scheduler name) and its warmup steps."""
        return self.cfg.lr_scheduler, self.cfg.warmup_steps

    def build(self, groups: list[dict]):
        """The torch optimizer over the parameter groups (each with its "lr")."""
        raise NotImplementedError

    def evaluating(self, optimizer):
        """A context in which the parameters hold the weights to evaluate and save (schedule-free
        optimizers train one sequence of weights and evaluate another); most have one."""
        return contextlib.nullcontext()

    def start(self, optimizer) -> None:
        """Before the first training step (and after a resume)."""
