"""What a model family is: everything that differs between Stable Diffusion 1.x, 2.x, SDXL (and the
families to come), answered by one small unit per family (as peft has one module per method), so that
loading, training, generation and the file formats ask the family instead of naming one.

Imports no torch at import time (the CLI's --help imports the registry)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Named groups of LoRA target modules of a UNet (peft matches a target against the end of a module's
# name). "attn" is the DreamBooth-LoRA default; the others follow kohya's LoCon-style options.
UNET_TARGET_GROUPS = {
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "ff": ("ff.net.0.proj", "ff.net.2"),
    "proj": ("proj_in", "proj_out"),
    "conv": ("conv1", "conv2", "conv_shortcut", "time_emb_proj"),
}
# Flow matching's timestep densities and loss weights (diffusers.training_utils).
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
CLIP_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # a CLIP text encoder's attention


class Family:
    name = "base"  # the registry's key: sd1, sd2, sdxl
    label = "base"  # in sentences: "Stable Diffusion 1.x"
    pipeline = "StableDiffusionPipeline"  # diffusers' pipeline class for it
    denoiser = "unet"  # the pipeline attribute of the network that denoises (and LoRA adapts)
    # Its text encoders and tokenizers, by pipeline attribute, in the order prompts are encoded.
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    # The text encoders that can train (LoRA, pivotal tuning, Textual Inversion); T5 stays frozen.
    trainable_text_encoders: tuple[str, ...] = ("text_encoder",)
    lora_target_groups: dict[str, tuple[str, ...]] = UNET_TARGET_GROUPS
    text_encoder_lora_targets: tuple[str, ...] = CLIP_TARGETS
    t5_tokenizer: str | None = None  # the pipeline attribute of a T5 tokenizer (its length is an option)
    default_sampler = "dpm++2m-karras"  # generation's sampler when none is given
    single_file_kinds: tuple[str, ...] = ()  # diffusers' infer_diffusers_model_type names
    kohya_version = "sd_v1"  # kohya's ss_base_model_version
    kohya_v2 = False  # kohya's ss_v2 (its --v2: an SD 2.x model)
    kohya_text_encoder_prefixes: dict[str, str] = {"text_encoder": "lora_te"}
    # A Textual Inversion file's parts, one per text encoder (AUTOMATIC1111's and ComfyUI's layout);
    # () for a single tensor named by its token.
    embedding_parts: tuple[str, ...] = ()
    upcast_vae = False  # the VAE overflows in fp16: keep it in fp32
    gpu_dtype = "fp16"  # generation's precision on a GPU when none is asked for
    default_guidance = 7.5  # generation's guidance scale when none is asked for (its pipeline's default)
    textual_inversion = True  # a new token's embedding can be learned (in every text encoder)
    min_snr = True  # the loss can be weighted by min-SNR (--snr-gamma): a DDPM-trained denoiser
    weighting_schemes: tuple[str, ...] = ()  # --weighting-scheme's choices (flow matching's timestep densities)
    kohya_fused = False  # the layout fuses several denoiser modules into one (kohya_entries names them)
    size_conditioning = False  # the denoiser is conditioned on each image's size and crop (SDXL)
    shard_blocks: tuple[str, ...] = ("down_blocks", "mid_block", "up_blocks")  # --fsdp's units in the denoiser
    safety_checker = True  # the pipeline has one (loaded as None: this tool makes no content decisions)

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        """Whether a model with these configs (model_index.json, the UNet's and the first text encoder's)
        is of this family."""
        raise NotImplementedError

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        """Whether a diffusers-format LoRA state dict, its keys alone, is for this family."""
        return False

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    def load_kwargs(self) -> dict[str, Any]:
        """What loading its pipeline takes besides the weights' dtype."""
        return {"safety_checker": None, "requires_safety_checker": False} if self.safety_checker else {}

    def kohya_entries(self, modules: dict[str, tuple], denoiser_config: dict | None) -> dict[str, tuple]:
        """{denoiser module path: (down, up, alpha)} -> {kohya name after lora_unet_: (down, up, alpha)},
        for a family whose layout fuses modules (kohya_fused); the others name each module apart
        (kohya_unet_name)."""
        raise NotImplementedError

    def kohya_state_to_diffusers(self, state: dict, denoiser_config: dict) -> dict | None:
        """A kohya-layout LoRA state dict as diffusers' (alphas folded into lora_B) where the family reads
        kohya files itself; None where stock `load_lora_weights` reads them."""
        return None

    def kohya_model_version(self, denoiser: dict | None) -> str:
        """kohya's ss_base_model_version for a model with this denoiser config."""
        return self.kohya_version

    def kohya_unet_name(self, path: str, unet_config: dict | None) -> str:
        """A UNet module's name in kohya's layout (before dots become underscores): diffusers' own."""
        return path

    # -- sizes, from the configs only --------------------------------------------------------------------
    def native_size(self, denoiser: dict, vae: dict) -> int:
        """The model's own resolution in pixels (the UNet's sample size x the VAE's factor)."""
        return int(denoiser["sample_size"]) * vae_factor(vae)

    def size_step(self, denoiser: dict, vae: dict) -> int:
        """The pixel step image sides must be multiples of: the VAE's factor x the UNet's downsampling."""
        return vae_factor(vae) * 2 ** (len(denoiser.get("block_out_channels", (0,))) - 1)

    # -- prompts ------------------------------------------------------------------------------------------
    def token_ids(self, tokenizers: list, prompt: str, max_sequence_length: int | None = None) -> list:
        """The prompt's token ids (1, L), one tensor per tokenizer, padded to each one's length."""
        return [tokenize(t, prompt) for t in tokenizers]

    def encode_prompt(self, text_encoders: list, ids: list, device) -> tuple[Any, Any]:
        """(hidden states the denoiser attends to, pooled embedding or None) of token ids (n, L), one
        tensor per tokenizer: the text encoder's last hidden state."""
        return text_encoders[0](ids[0].to(device))[0], None

    def conditions(self, pooled, sizes: list[tuple[int, ...]] | None) -> dict | None:
        """The denoiser's further conditioning of a batch besides the text (SDXL's pooled embedding and
        micro-conditioning: sizes, given where size_conditioning; SD3's and FLUX's pooled embedding)."""
        return None

    # -- training -----------------------------------------------------------------------------------------
    def training_scheduler(self, scheduler_config, zero_terminal_snr: bool = False):
        """The scheduler that noises training examples, from the pipeline's scheduler config."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(
            scheduler_config, **({"rescale_betas_zero_snr": True} if zero_terminal_snr else {})
        )

    def objective(self, scheduler, cfg=None):
        """The training objective (families.objectives) for this config (None: the defaults)."""
        from .objectives import Denoising

        return Denoising(scheduler, getattr(cfg, "snr_gamma", None))

    def predict(self, denoiser, noisy, t, emb, conditions: dict | None, cfg=None):
        """The denoiser's prediction for noisy latents (B, C, h, w) at timesteps t (B,)."""
        return denoiser(noisy, t, emb, added_cond_kwargs=conditions).sample

    def guidance_embedded(self, denoiser: dict) -> bool:
        """Whether the denoiser (of this config) takes the guidance scale as an input (FLUX.1 [dev])."""
        return False

    def resolve_options(self, cfg, denoiser: dict, t5_length: int | None = None):
        """The config with the family's implicit training defaults made explicit (denoiser: its config;
        t5_length: the longest prompt its T5 tokenizer takes, where it has one): class and validation
        images are guided as generation is by default (diffusers' scripts call the pipeline with its own)."""
        default = self.guidance_default(denoiser)
        return dataclasses.replace(
            cfg,
            class_guidance=default if cfg.class_guidance is None else cfg.class_guidance,
            validation_guidance=default if cfg.validation_guidance is None else cfg.validation_guidance,
        )

    def guidance_default(self, denoiser: dict) -> float:
        """Generation's guidance scale when none is asked for, for a model of this denoiser config."""
        return self.default_guidance

    def training_options_refused(self, cfg, denoiser: dict) -> list[tuple[str, str]]:
        """(option, why) of each option set that this family cannot honour."""
        out = [
            (k, "for flow-matching models (SD3, FLUX)")
            for k in ("weighting_scheme", "logit_mean", "logit_std", "mode_scale")
            if getattr(cfg, k) is not None and not self.weighting_schemes
        ]
        if cfg.guidance_scale is not None:
            out.append(("guidance_scale", "for guidance-distilled models (FLUX.1 [dev])"))
        if cfg.max_sequence_length is not None:
            out.append(("max_sequence_length", "for models with a T5 text encoder (SD3, FLUX)"))
        if cfg.text_encoder_2_lr is not None and len(self.trainable_text_encoders) < 2:
            out.append(("text_encoder_2_lr", "for a second text encoder that trains"))
        return out

    # -- generation ---------------------------------------------------------------------------------------
    def sampler(self, name: str, base_config, zero_terminal_snr: bool = False):
        """The named sampler on the model's noise schedule (samplers.SCHEDULERS)."""
        import diffusers

        from .samplers import SCHEDULERS, ZERO_SNR

        cls_name, options = SCHEDULERS[name]
        extra = ZERO_SNR if zero_terminal_snr else {}
        return getattr(diffusers, cls_name).from_config(base_config, **options, **extra)

    def samplers(self) -> tuple[str, ...]:
        from .samplers import SCHEDULERS

        return tuple(SCHEDULERS)

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
        """The pipeline call's arguments for guidance and the negative prompt (pipe: the pipeline called,
        batch: how many prompts it is given)."""
        from .samplers import GUIDANCE_RESCALE

        return {
            "negative_prompt": negative,
            "guidance_scale": guidance,
            "guidance_rescale": GUIDANCE_RESCALE if zero_terminal_snr else 0.0,
        }

    def __repr__(self) -> str:
        return self.label


def vae_factor(vae: dict) -> int:
    """How many pixels one latent spans: 2 per VAE downsampling level."""
    return 2 ** (len(vae["block_out_channels"]) - 1)


def tokenize(tokenizer, prompt: str, max_length: int | None = None):
    """(1, L) token ids, padded (and truncated) to max_length or the tokenizer's own length."""
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
