"""What makes an image (SamplingConfig) and the commands that make and score them: generate, grid,
evaluate."""

from __future__ import annotations

import dataclasses

from ..errors import UserError
from ..families.samplers import SAMPLER_NAMES
from ..options import check_bounds, check_required, option
from .train import FAMILY_GUIDANCE, allow_pickle_field, model_config_field


def dino_model_field():
    return option("facebook/dino-vits16", "DINO extractor: hub id or local folder")


def clip_model_field():
    return option("openai/clip-vit-base-patch32", "CLIP extractor: hub id or local folder")


SCHEDULER_NAMES = SAMPLER_NAMES  # the families' samplers (families.samplers)
DEFAULT_SAMPLER = "dpm++2m-karras"  # (a UNet family's; flow-matching families default to euler)
SAMPLER_HELP = "sampler (default: the model family's: dpm++2m-karras; SD3 and FLUX: euler, or heun)"
# Karras sigmas would start from the (near) infinite sigma of a zero-SNR schedule; PNDM has no such option.
ZERO_SNR_SCHEDULERS = ("ddim", "ddpm", "euler", "euler-a", "dpm++2m", "unipc")
DTYPES = ("auto", "fp32", "fp16", "bf16")


@dataclasses.dataclass
class SamplingConfig:
    """What makes one image: shared by generate, grid and evaluation."""

    model: str | None = option(
        None, "base model: hub id, local diffusers folder or single-file .safetensors checkpoint", required=True
    )
    model_config: str | None = model_config_field()
    allow_pickle: bool = allow_pickle_field()
    lora: str | None = option(None, "trained LoRA: a run folder, a checkpoint folder or a .safetensors file")
    embedding: str | None = option(
        None, "a Textual Inversion embedding (learned_embeds.safetensors, or its run folder)"
    )
    prompt: list[str] = option([], 'prompt (repeatable), e.g. "a photo of sks cat in a bucket"')
    negative_prompt: str = option("", "negative prompt")
    lora_scale_unet: float = option(1.0, "strength of the LoRA in the UNet")
    lora_scale_text_encoder: float = option(1.0, "strength of the LoRA in the text encoder")
    guidance: float | None = option(None, "classifier-free guidance scale (CFG)" + FAMILY_GUIDANCE, ge=0)
    steps: int = option(30, "denoising steps", ge=1)
    scheduler: str | None = option(None, SAMPLER_HELP, choices=SCHEDULER_NAMES)
    seed: int = option(0, "seed of the first image; image i uses seed + i")
    max_sequence_length: int | None = option(
        None,
        "models with a T5 text encoder (SD3, FLUX): its prompt length in tokens (default: the pipeline's)",
        ge=1,
        le=512,
    )
    width: int | None = option(None, "image width (default: the model's native size)", gt=0, multiple_of=8)
    height: int | None = option(None, "image height (default: the model's native size)", gt=0, multiple_of=8)
    dtype: str = option(
        "auto",
        "weights' precision (auto: fp16 on a GPU, bf16 for the flow-matching families; fp32 on the CPU)",
        choices=DTYPES,
    )
    zero_terminal_snr: bool = option(
        False,
        "sample with the zero-terminal-SNR schedule, trailing timesteps and guidance rescale 0.7 (Lin et al., "
        "2024), for models trained with --zero-terminal-snr",
    )

    def validate(self) -> None:
        check_required(self)
        sampler = self.scheduler or DEFAULT_SAMPLER
        if self.zero_terminal_snr and sampler not in ZERO_SNR_SCHEDULERS:
            why = "spends its steps next to pure noise" if "karras" in sampler else "has no such schedule"
            raise UserError(
                f"--zero-terminal-snr: --scheduler {sampler} {why} on a zero-SNR schedule; give --scheduler "
                + " or ".join(ZERO_SNR_SCHEDULERS)
            )
        check_bounds(self)


@dataclasses.dataclass
class GenerateConfig(SamplingConfig):
    prompts_file: str | None = option(None, "a text file with one prompt per line")
    num_images: int = option(4, "images per prompt", ge=1)
    batch_size: int = option(1, "images per forward pass (1 makes every image exactly reproducible alone)", ge=1)
    output_dir: str = option("outputs", "where images and their JSON sidecars are written")
    from_image: str | None = option(None, "repeat the generation that made this PNG (flags given too override it)")
    lora_dir: str | None = option(
        None,
        "where --from-image finds the LoRA a PNG's prompt names (<lora:NAME:...>) when the PNG does not say "
        "where it is (AUTOMATIC1111's and other tools' images): by AUTOMATIC1111's hash, else by name "
        "(default: the current folder)",
    )
    no_fuse: bool = option(False, "keep the LoRA unfused (fusing makes generating with a LoRA as fast as without)")
    no_selection: bool = option(
        False, "with --lora RUN: use its final weights, not the checkpoint `dreambooth select` chose"
    )

    def validate(self) -> None:
        super().validate()
        if not self.prompt:
            raise UserError("--prompt: required (or --prompts-file, or --from-image)")


@dataclasses.dataclass
class GridConfig(SamplingConfig):
    x: str | None = option(
        None, "X axis: name=values, e.g. guidance=3,5,7.5 or seed=0-7 or checkpoint=500,1000", required=True
    )
    y: str | None = option(None, "Y axis, as --x")
    z: str | None = option(None, "Z axis: one grid per value")
    output_dir: str = option("grids", "where the grids, single images and index.html are written")
    cache_dir: str | None = option(None, "cell cache (default: OUTPUT/cells); shared by grids that overlap")


@dataclasses.dataclass
class EvaluateConfig(SamplingConfig):
    model: str | None = option(None, "base model: with it, generate the protocol's images (DreamBench prompts) first")
    prompt: list[str] = option([], "the prompt of every generated image that carries none")
    real: str | None = option(None, "folder of the real subject photos", required=True)
    generated: str | None = option(None, "folder of generated images to score (their prompts from PNG metadata)")
    class_generated: str | None = option(None, "folder of images generated for the class prompt (for PRES)")
    prompts_file: str | None = option(None, "one prompt per generated image (sorted by name), or one for all")
    identifier: str = option("sks", "the rare identifier, removed from prompts before CLIP-T")
    keep_identifier: bool = option(False, "score CLIP-T with the identifier left in the prompt")
    class_noun: str | None = option(None, "the subject's class noun (dog, backpack, ...), for the protocol")
    kind: str = option(
        "auto",
        "DreamBench prompt set: live (pets) or object; auto: live for cat and dog",
        choices=("auto", "live", "object"),
    )
    prompts: str = option(
        "dreambench", "the protocol's prompts: dreambench or a file of templates ({identifier}, {class})"
    )
    images_per_prompt: int = option(4, "images generated per prompt (the paper uses 4)")
    num_class_images: int = option(16, "images generated for the class prompt, for PRES")
    class_prompt: str | None = option(None, "the class prompt for PRES (default: 'a {class noun}')")
    dino_model: str = dino_model_field()
    clip_model: str = clip_model_field()
    output_dir: str = option("evaluation", "where metrics.json, per_prompt.csv, metrics.md (and generated images) go")
    cache_dir: str | None = option(None, "embedding cache (default: OUTPUT/embeddings)")
    embed_batch_size: int = option(16, "images per batch through the extractors")

    def validate(self) -> None:
        check_required(self)
        if self.model is None and self.generated is None:
            raise UserError("--generated: required (a folder of images to score), or --model to generate them")
        if self.model is not None and self.generated is not None:
            raise UserError("--generated: not with --model (which generates the images itself)")
        if self.model is not None and not self.class_noun:
            raise UserError("--class-noun: required with --model (the protocol's prompts name the class)")
        if self.images_per_prompt < 1 or self.num_class_images < 0 or self.embed_batch_size < 1:
            raise UserError("--images-per-prompt, --embed-batch-size: must be at least 1; --num-class-images >= 0")
        if self.model is not None:
            super().validate()
