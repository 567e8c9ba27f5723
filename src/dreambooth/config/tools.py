"""The other commands' configs: export, sweep, ui, demo, tiny-model, check-data (their flags come from
these fields, as every command's do)."""

from __future__ import annotations

import dataclasses

from ..formats.kohya import DORA_FOR
from ..options import check_bounds, check_required, option
from ..tiny import ARCHS as TINY_ARCHS
from .sampling import DTYPES, FAMILY_GUIDANCE, clip_model_field, dino_model_field


@dataclasses.dataclass
class LoraResizeConfig:
    lora: str = option(None, "a run folder, checkpoint folder or LoRA file (diffusers' layout)", positional=True,
                       metavar="RUN-OR-FILE")  # fmt: skip
    out: str = option(None, "the .safetensors file to write", positional=True)
    rank: int = option(None, "the new rank (at most the LoRA's)", required=True, ge=1)
    overwrite: bool = option(False, "replace an existing file")

    def validate(self) -> None:
        check_required(self)
        check_bounds(self)


@dataclasses.dataclass
class LoraMergeConfig:
    loras: list[str] = option(None, "the LoRAs to merge (runs, checkpoints or files)", positional=True, nargs="+",
                              metavar="LORA")  # fmt: skip
    out: str = option(None, "the .safetensors file to write", positional=True)
    weights: list[float] = option([], "each LoRA's weight, e.g. 0.7,0.3 (default: 1 each)")
    rank: int | None = option(None, "resize the merged LoRA to this rank by SVD (default: the ranks concatenated)",
                              ge=1)  # fmt: skip
    overwrite: bool = option(False, "replace an existing file")

    def validate(self) -> None:
        check_bounds(self)


@dataclasses.dataclass
class LoraExtractConfig:
    out: str = option(None, "the .safetensors file to write", positional=True)
    base: str = option(None, "the base model (hub id, folder or single file)", required=True)
    tuned: str = option(None, "its full fine-tune (e.g. a `--method full` run's folder)", required=True)
    rank: int = option(None, "the LoRA's rank", required=True, ge=1)
    threshold: float = option(
        1e-6, "layers whose largest change is at most this share of their largest weight are left out", ge=0
    )
    overwrite: bool = option(False, "replace an existing file")

    def validate(self) -> None:
        check_required(self)
        check_bounds(self)


@dataclasses.dataclass
class LoraBakeConfig:
    out: str = option(None, "a folder (diffusers' layout) or a .safetensors file (one checkpoint)", positional=True)
    model: str = option(None, "the base model: hub id, diffusers folder or single file", required=True)
    lora: str = option(None, "the LoRA: a run, a checkpoint or a file (diffusers' or kohya's layout)", required=True)
    scale: float = option(1.0, "the LoRA's strength in the baked weights")
    dtype: str = option("fp16", "a single file's weights' precision", choices=("fp16", "bf16", "fp32"))
    overwrite: bool = option(False, "replace an existing folder or file")

    def validate(self) -> None:
        check_required(self)
        check_bounds(self)


@dataclasses.dataclass
class ExportConfig:
    out: str = option(None, "the .safetensors file to write", positional=True)
    lora: str | None = option(None, "the run folder, checkpoint folder or LoRA file to export")
    model: str | None = option(
        None,
        "with --format single-file: the diffusers folder (or hub id) to write; with a LoRA file outside its run "
        "folder: its base model",
    )
    format: str = option("kohya", "layout to write", choices=("kohya", "diffusers", "single-file"))
    dtype: str = option("fp16", "single-file weights' precision", choices=("fp16", "bf16", "fp32"))
    dora_for: str = option(
        "comfyui",
        "a DoRA LoRA's dora_scale in the convention of the program that loads it, which merges it as peft does "
        "(comfyui: also Forge; needs the base model's weights); AUTOMATIC1111 cannot (refused)",
        choices=DORA_FOR,
    )
    overwrite: bool = option(False, "replace an existing file")

    def validate(self) -> None:
        check_bounds(self)


@dataclasses.dataclass
class SweepConfig:
    config: str | None = option(None, "the training config every run starts from (YAML)", required=True)
    output_dir: str | None = option(None, "where runs/, logs/ and the report go", required=True)
    vary: list[str] = option(
        [],
        "a training option and its values (repeatable): learning-rate=3e-4,1e-4 max-steps=1000,2000",
        metavar="NAME=V1,V2",
    )
    parallel: int = option(1, "runs training at once", ge=1)
    evaluate: bool = option(False, "score every checkpoint of every run")
    real: str | None = option(None, "the real subject photos for DINO/CLIP-I (default: each run's --instance-dir)")
    metrics: str = option(
        "auto",
        "paper (DINO, CLIP-I, CLIP-T, PRES) or the toy world's oracle; auto: the oracle on a toy-world model "
        "(toyworld, toyworld-flux, or a folder its recipe wrote)",
        choices=("auto", "paper", "oracle"),
    )
    objective: str | None = option(
        None,
        "weights of the min-max-normalised metrics whose sum picks the recommendation "
        "(default dino=1,clip_t=1; oracle: fidelity=1,recontext=1)",
    )
    prompts: int = option(4, "DreamBench prompts per checkpoint", ge=1)
    images_per_prompt: int = option(4, "images per prompt", ge=1)
    num_class_images: int = option(8, "class-prompt images for PRES", ge=0)
    guidance: float | None = option(None, "guidance scale of the scored images" + FAMILY_GUIDANCE)
    steps: int = option(25, "denoising steps of the scored images", ge=1)
    width: int | None = option(
        None, "width of the scored images (default: the model's native size)", gt=0, multiple_of=8
    )
    height: int | None = option(
        None, "height of the scored images (default: the model's native size)", gt=0, multiple_of=8
    )
    seed: int = option(0, "seed of the first image of each prompt")
    dino_model: str = dino_model_field()
    clip_model: str = clip_model_field()

    def validate(self) -> None:
        check_required(self)
        check_bounds(self)


@dataclasses.dataclass
class UIConfig:
    port: int = option(7860, "port", ge=1, le=65535)
    projects: str = option("dreambooth-projects", "folder of the runs it lists and starts")
    model: str | None = option(None, "the default base model of its forms: hub id or local folder")
    host: str = option(
        "127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network, with a warning)"
    )
    share: bool = option(False, "also make a public gradio.live link (with a warning)")
    auth: str | None = option(None, "ask for this user name and password", metavar="USER:PASSWORD")
    dtype: str = option("auto", "generation precision", choices=DTYPES)

    def validate(self) -> None:
        check_bounds(self)


@dataclasses.dataclass
class DemoConfig:
    output_dir: str = option("demo-output", "where the demo writes")
    max_steps: int = option(2500, "DreamBooth's training steps (Textual Inversion takes a fifth of them)", ge=1)
    images: int = option(16, "images per prompt", ge=1)
    guidance: float = option(5.0, "guidance scale")
    overwrite: bool = option(False, "replace an earlier demo in --output-dir")
    subject: str = option(
        "heart",
        "the toy world's subject: heart (orange, purple dots), square (purple, red stripes) or circle (pink, "
        "brown dots), each with a black outline",
        choices=("heart", "square", "circle"),
    )
    model: str = option(
        "toyworld",
        "the toy world's base model: toyworld (a Stable Diffusion UNet, DDPM), toyworld-flux (its FLUX.1-"
        "architecture twin, rectified flow; no Textual Inversion row, as FLUX has none here), or a folder that "
        "`python -m dreambooth.toyworld.train OUT` wrote",
    )

    def validate(self) -> None:
        check_bounds(self)


@dataclasses.dataclass
class TinyModelConfig:
    out: str = option(None, "folder to write", positional=True)
    seed: int = option(0, "seed of the random weights")
    arch: str = option(
        "sd15",
        "sd15 (epsilon prediction), sd2 (v-prediction, linear projections, OpenCLIP-style text encoder), sdxl "
        "(two text encoders, pooled embeddings and micro-conditioning), sd3 (MMDiT, CLIP x2 + T5, flow matching), "
        "flux (FLUX.1 [dev] layout: packed latents, CLIP + T5, embedded guidance) or flux-schnell (without it)",
        choices=TINY_ARCHS,
    )

    def validate(self) -> None:
        pass


@dataclasses.dataclass
class CheckDataConfig:
    dir: str = option(None, "the folder of photos", positional=True)

    def validate(self) -> None:
        pass
