"""What the flow-matching transformer families (SD3, FLUX) share: rectified-flow training with
diffusers' timestep densities and loss weights, a T5 encoder whose prompt length is an option and which
never trains, flow samplers, and no DDPM-only options (min-SNR, zero terminal SNR)."""

from __future__ import annotations

import dataclasses

from ..errors import UserError
from .base import WEIGHTING_SCHEMES, Family, tokenize

# diffusers' SD3 and FLUX scripts' defaults (the weighting scheme is the family's)
FLOW_DEFAULTS = {"weighting_scheme": None, "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29}
DEFAULT_GUIDANCE = 3.5  # the guidance embedded while training a guidance-distilled model (diffusers' FLUX script)


class FlowFamily(Family):
    denoiser = "transformer"
    default_sampler = "euler"
    flow_samplers: tuple[str, ...] = ("euler",)
    default_weighting = "none"
    default_max_sequence_length = 77
    t5_tokenizer = "tokenizer_3"  # the pipeline attribute of the T5 tokenizer
    upcast_vae = True
    gpu_dtype = "bf16"  # FLUX.1 and SD 3.5 are published and run in bf16; their activations overflow fp16
    safety_checker = False
    textual_inversion = False
    min_snr = False  # flow matching weighs its sigmas by --weighting-scheme instead
    weighting_schemes = WEIGHTING_SCHEMES
    kohya_fused = True  # kohya's names are the original model's, whose layers fuse several of diffusers'

    def kohya_groups(self, config: dict) -> dict[str, tuple[tuple[str, int], ...]]:
        """{kohya name after lora_unet_: ((diffusers module path, output width), ...)} for a transformer of
        this config, in the fused weight's row order (fused.py)."""
        raise NotImplementedError

    def kohya_entries(self, modules: dict[str, tuple], denoiser_config: dict | None) -> dict[str, tuple]:
        from .fused import to_fused

        if denoiser_config is None:
            raise UserError(f"a {self.label} LoRA needs its base model to name the fused layers; give --model")
        return to_fused(modules, self.kohya_groups(denoiser_config), self.label)

    def kohya_state_to_diffusers(self, state: dict, denoiser_config: dict) -> dict:
        """kohya's file in diffusers' layout, split by this model's widths (diffusers' own kohya-FLUX
        converter assumes FLUX.1's 3072-wide layers; it has none for SD3)."""
        from .fused import fused_state_to_diffusers

        groups = self.kohya_groups(denoiser_config)
        return fused_state_to_diffusers(state, groups, self.kohya_text_encoder_prefixes, self.label)

    def native_size(self, denoiser: dict, vae: dict) -> int:
        from .base import vae_factor

        return int(denoiser.get("sample_size") or 128) * vae_factor(vae)

    def token_ids(self, tokenizers: list, prompt: str, max_sequence_length: int | None = None) -> list:
        """CLIP tokenizers at their 77 tokens; T5 at max_sequence_length (the family's default if None)."""
        t5 = tokenizers[self.tokenizers.index(self.t5_tokenizer)]
        length = max_sequence_length or self.sequence_length(t5.model_max_length)
        return [
            tokenize(t, prompt, length if name == self.t5_tokenizer else None)
            for name, t in zip(self.tokenizers, tokenizers)
        ]

    def training_scheduler(self, scheduler_config, zero_terminal_snr: bool = False):
        """A copy of the model's flow-matching scheduler (its training timesteps and sigmas)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)

    def flow_options(self, cfg=None) -> dict:
        """The rectified-flow options of cfg (None: none given), defaults filled in as diffusers' scripts
        default them."""
        given = {k: getattr(cfg, k, None) for k in FLOW_DEFAULTS}
        defaults = {**FLOW_DEFAULTS, "weighting_scheme": self.default_weighting}
        return {k: defaults[k] if v is None else v for k, v in given.items()}

    def objective(self, scheduler, cfg=None):
        from .objectives import RectifiedFlow

        return RectifiedFlow(scheduler, **self.flow_options(cfg))

    def sequence_length(self, t5_length: int | None = None) -> int:
        """T5's prompt length when none is asked: the family's default (diffusers' scripts'), or the
        model's T5 tokenizer's own maximum where that is shorter (the toy world's FLUX twin: 32)."""
        return min(self.default_max_sequence_length, t5_length or self.default_max_sequence_length)

    def resolve_options(self, cfg, denoiser: dict, t5_length: int | None = None):
        """The flow options' defaults made explicit."""
        guidance = None
        if self.guidance_embedded(denoiser):
            guidance = DEFAULT_GUIDANCE if cfg.guidance_scale is None else cfg.guidance_scale
        return dataclasses.replace(
            super().resolve_options(cfg, denoiser, t5_length),
            **self.flow_options(cfg),
            max_sequence_length=cfg.max_sequence_length or self.sequence_length(t5_length),
            guidance_scale=guidance,
        )

    def training_options_refused(self, cfg, denoiser: dict) -> list[tuple[str, str]]:
        out = []
        if cfg.snr_gamma is not None and not self.min_snr:
            out.append(("snr_gamma", "min-SNR weighting is for DDPM-trained models (use --weighting-scheme)"))
        if cfg.zero_terminal_snr:
            out.append(("zero_terminal_snr", "a DDPM schedule's rescaling; flow matching already reaches pure noise"))
        if cfg.guidance_scale is not None and not self.guidance_embedded(denoiser):
            out.append(("guidance_scale", "for guidance-distilled models (FLUX.1 [dev]), whose transformer embeds it"))
        if cfg.text_encoder_2_lr is not None and len(self.trainable_text_encoders) < 2:
            out.append(("text_encoder_2_lr", "for a second text encoder that trains (T5 stays frozen)"))
        if cfg.use_dora and cfg.save_format != "diffusers":
            out.append(("save_format", f"DoRA has no kohya form for {self.label} (its layers are fused there)"))
        return out

    def sampler(self, name: str, base_config, zero_terminal_snr: bool = False):
        import diffusers

        from .samplers import FLOW_SCHEDULERS

        cls_name, options = FLOW_SCHEDULERS[name]
        return getattr(diffusers, cls_name).from_config(base_config, **options)

    def samplers(self) -> tuple[str, ...]:
        return self.flow_samplers

    def call_kwargs(
        self,
        negative: list[str] | None,
        guidance: float,
        zero_terminal_snr: bool,
        max_sequence_length=None,
        *,
        pipe=None,
        batch: int = 1,
    ) -> dict:
        if not max_sequence_length and pipe is not None:
            max_sequence_length = self.sequence_length(getattr(pipe, self.t5_tokenizer).model_max_length)
        extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
        return {"negative_prompt": negative, "guidance_scale": guidance, **extra}
