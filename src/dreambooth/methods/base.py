"""What a training method is: which parameters train, and how the result is saved.

The training loop calls only these methods and never branches on a method's name (the shape of
peft's tuners: one small object per method, registered in one place).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig
from ..models import Components

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class Method:
    name = "base"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @property
    def trains_text_encoder(self) -> bool:
        return False

    def check(self) -> None:
        """Checks of the method's own inputs before any model is loaded (raise UserError)."""

    def prepare(self, comps: Components) -> list[dict]:
        """Freeze what stays fixed, add what trains; return optimizer parameter groups."""
        raise NotImplementedError

    def instance_prompts(self) -> list[str]:
        """The prompts the subject's photos are paired with (one is drawn per example)."""
        return [self.cfg.instance_prompt]

    def rewrite_prompt(self, prompt: str) -> str:
        """The prompt as training feeds it (pivotal tuning puts its token in place of the identifier)."""
        return prompt

    def after_step(self, comps: Components) -> None:
        """Called after every optimizer step (e.g. to restore what must not change)."""

    def save(self, comps: Components, folder: Path) -> list[Path]:
        """Write the method's user-facing result into folder; return the files written. A method with
        several files raises errors.Unsaved when some could not be written (the others are on disk)."""
        raise NotImplementedError

    # How a trained result (a run folder, or one of its checkpoints) is used to generate.
    def weights_in(self, folder: Path) -> bool:
        """Whether folder holds this method's user-facing weights."""
        raise NotImplementedError

    def sampling(self, folder: Path) -> dict[str, str]:
        """The generate settings (model, lora or embedding) that use the weights in folder."""
        raise NotImplementedError

    def subject_word(self) -> str | None:
        """The word that brings the subject into a prompt, before the class noun: the identifier ('sks'
        in 'a photo of sks dog'); None when the instance prompt does not show one."""
        from ..data.captions import identifier_of

        return self.cfg.identifier or identifier_of(self.cfg.instance_prompt, self.cfg.class_prompt)

    def subject_phrase(self, class_noun: str) -> str:
        """How a prompt names the subject: 'sks dog' (the paper's "a [V] dog")."""
        return f"{self.subject_word()} {class_noun}"

    def state_dict(self, comps: Components) -> dict[str, torch.Tensor]:
        """Every trainable tensor, by component and parameter name (for exact resume)."""
        out = {}
        for comp in COMPONENTS:
            if getattr(comps, comp, None) is None:
                continue
            for name, p in getattr(comps, comp).named_parameters():
                if p.requires_grad:
                    out[f"{comp}.{name}"] = p.detach().float().cpu().contiguous()
        return out

    def load_state_dict(self, comps: Components, state: dict[str, torch.Tensor]) -> None:
        own = {}
        for comp in COMPONENTS:
            if getattr(comps, comp, None) is None:
                continue
            for name, p in getattr(comps, comp).named_parameters():
                if p.requires_grad:
                    own[f"{comp}.{name}"] = p
        missing = set(own) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for key, p in own.items():
                p.copy_(state[key].to(p.dtype))
