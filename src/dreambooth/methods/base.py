"""What a training method is: which parameters train, how the result is saved, found and used.

A method is one unit (the shape of peft's tuners: one small object per method, registered in one
place) that answers everything about itself: its own options (a dataclass of fields that TrainConfig
takes in), its defaults, its checks, how much it writes, whether it reads captions, what trains,
how it saves, where its weights are and how they generate, what its model card says. The training
loop and everything else ask it and never compare its name. Imports no torch at import time (the
CLI's --help reads the options).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import Components
from ..options import NoOptions, refuse_others_options

if TYPE_CHECKING:
    import torch

    from ..config import TrainConfig


class Method:
    name = "base"
    label = "base"  # in sentences: "DreamBooth (LoRA)"
    setting_label = "base"  # "--rank: a LoRA setting, and --method is full"
    options: type = NoOptions  # the dataclass of its own fields (TrainConfig includes them)
    # Defaults from the method's public recipe; learning_rate and max_steps when not given.
    defaults: dict[str, Any] = {"learning_rate": 1e-4, "max_steps": 2000, "warmup": 500}
    uses_captions = True  # per-image captions (photo.txt) become its prompts
    text_encoder_choice = True  # --train-text-encoder applies to it
    trained_bytes_estimate = 200_000_000  # fp32 size of what trains, for the disk check
    shardable = True  # --fsdp can shard what it trains (a model's weights)
    lora_scaled = False  # its weights generate at a LoRA strength (`select --scales` tries several)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    # -- options, before anything is read -------------------------------------------------------------
    @classmethod
    def default_learning_rate(cls, cfg: TrainConfig) -> float:
        return cls.defaults["learning_rate"]

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> TrainConfig:
        """The config with the method's implicit defaults made explicit (what config.yaml shows)."""
        return cfg

    @classmethod
    def validate_options(cls, cfg: TrainConfig) -> None:
        """The method's checks of the config that need several fields (bounds are in the fields)."""

    @classmethod
    def refuse_options_of_others(cls, cfg: TrainConfig, others: list[type[Method]]) -> None:
        """Another method's option set away from its default is refused, naming it."""
        refuse_others_options(cfg, others, "setting_label", f"--method is {cls.name}")

    @classmethod
    def unavailable_for(cls, family) -> str | None:
        """Why the method cannot train a model of this family (families.Family), or None."""
        return None

    @classmethod
    def protocol_options(cls, identifier: str, noun: str, subject: str) -> dict[str, Any]:
        """Training options of the paper's protocol (`compare`) for one subject: DreamBooth's prompts,
        with prior preservation on the class (its class_dir is shared by the methods that use it)."""
        return {"instance_prompt": f"a photo of {identifier} {noun}", "class_prompt": f"a photo of a {noun}"}

    def trained_bytes(self) -> int:
        """fp32 size of what trains, from the model's configs and files only (nothing is loaded)."""
        return self.trained_bytes_estimate

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

    def caption_terms(self, concept) -> tuple[str | None, str]:
        """For a concept's per-image captions: the word a caption names the subject by, and the prompt
        of a photo without a caption (put in front of a caption that lacks the word)."""
        from ..data.captions import identifier_of

        identifier = self.cfg.identifier or identifier_of(concept.instance_prompt, concept.class_prompt)
        return identifier, concept.instance_prompt

    def _pairs(self, comps: Components) -> list[tuple]:
        """(tokenizer, text encoder) of each of the family's text encoders that can train."""
        return [(tok, te) for _, tok, te in comps.trainable_encoders()]

    def text_encoder_lrs(self, comps: Components) -> list[float]:
        """Each trainable text encoder's learning rate: --text-encoder-lr, a second one's --text-encoder-2-lr
        (else the same)."""
        second = self.cfg.text_encoder_2_lr if self.cfg.text_encoder_2_lr is not None else self.cfg.text_encoder_lr
        return [self.cfg.text_encoder_lr, *[second] * (len(comps.trainable_encoders()) - 1)]

    def card_lines(self) -> list[str]:
        """What the model card says about the method's own settings."""
        return []

    def usage(self, run: Path, pipeline: str, load: str, trigger: str) -> list[str]:
        """How to use the trained result (markdown lines); pipeline: diffusers' class for the model's
        family; load: how the base pipeline is loaded."""
        raise NotImplementedError

    def trigger(self) -> str:
        """What brings the subject, for the model card: the instance prompt."""
        return self.cfg.instance_prompt or ""

    def state_dict(self, comps: Components) -> dict[str, torch.Tensor]:
        """Every trainable tensor, by component and parameter name (for exact resume)."""
        out = {}
        for comp in (comps.family.denoiser, *comps.family.text_encoders):
            for name, p in comps.module(comp).named_parameters():
                if p.requires_grad:
                    out[f"{comp}.{name}"] = p.detach().float().cpu().contiguous()
        return out

    def load_state_dict(self, comps: Components, state: dict[str, torch.Tensor]) -> None:
        own = {}
        for comp in (comps.family.denoiser, *comps.family.text_encoders):
            for name, p in comps.module(comp).named_parameters():
                if p.requires_grad:
                    own[f"{comp}.{name}"] = p
        missing = set(own) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
        import torch

        with torch.no_grad():
            for key, p in own.items():
                p.copy_(state[key].to(p.dtype))
