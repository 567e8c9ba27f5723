"""Typed configs: one dataclass per command, read from YAML and overridden by flags.

Every field is a flag (`learning_rate` -> `--learning-rate`) and a key of the config file (written
with underscores; `learning-rate` is accepted too). An unknown key or a value of the wrong type is an
error, never a silent default. This module imports no torch, so `dreambooth --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .formats.kohya import A1111_DORA

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Named groups of LoRA target modules (peft matches a target against the end of a module's name).
# "attn" is the DreamBooth-LoRA default; the others follow kohya's LoCon-style options.
LORA_TARGET_GROUPS = {
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "ff": ("ff.net.0.proj", "ff.net.2"),
    "proj": ("proj_in", "proj_out"),
    "conv": ("conv1", "conv2", "conv_shortcut", "time_emb_proj"),
}
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DEFAULT_WARMUP = 500
# Each method's defaults, from its public recipe: LoRA DreamBooth (diffusers' example), the paper's
# Stable Diffusion fine-tuning (lr 5e-6, ~1000 steps), Textual Inversion (Gal et al.: lr 5e-4 scaled
# by the batch, 3000 steps, constant).
METHOD_DEFAULTS = {
    "lora": {"learning_rate": 1e-4, "max_steps": 2000, "warmup": DEFAULT_WARMUP},
    "full": {"learning_rate": 5e-6, "max_steps": 1000, "warmup": 0},
    "textual-inversion": {"learning_rate": 5e-4, "max_steps": 3000, "warmup": 0},
}


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def _model_config_field():
    return _f(
        None,
        "with a single-file --model: a diffusers folder or hub id of the same architecture, for its configs, "
        "tokenizer and scheduler (default: the one diffusers infers from the file's keys)",
    )


def _allow_pickle_field():
    return _f(False, "accept a pickled --model checkpoint (.ckpt, .pt, .bin), which can run code when loaded")


@dataclasses.dataclass
class TrainConfig:
    # what to train on
    model: str | None = _f(
        None,
        "base model: hub id (stable-diffusion-v1-5/stable-diffusion-v1-5), a local diffusers folder or a single-file "
        ".safetensors checkpoint",
        required=True,
    )
    model_config: str | None = _model_config_field()
    allow_pickle: bool = _allow_pickle_field()
    instance_dir: str | None = _f(None, "folder with the 3-5 photos of the subject", required=True)
    concepts: str | None = _f(
        None,
        "several concepts in one run: a YAML list of {instance_dir, instance_prompt[, class_prompt, class_dir, "
        "num_class_images]}, taken in turn (replaces --instance-dir, --instance-prompt and the class flags)",
    )
    skip_bad_images: bool = _f(
        False, "train on the usable photos of --instance-dir, leaving out (and naming) the ones that cannot be used"
    )
    instance_prompt: str | None = _f(None, 'prompt with the identifier, e.g. "a photo of sks cat"', required=True)
    caption_identifier: str = _f(
        "insert",
        "per-image captions (photo.txt beside photo.jpg) without the identifier: insert (the instance prompt "
        "is put in front) or require (refused)",
        choices=("insert", "require"),
    )
    identifier: str | None = _f(
        None, "the rare identifier captions must name (default: the word before the class noun, e.g. sks)"
    )
    caption_dropout: float = _f(
        0.0, "train this share of the photos with an empty prompt (keeps unconditional generation: 0.05-0.1)"
    )
    output_dir: str | None = _f(None, "where the run writes its weights, checkpoints, config and log", required=True)
    # prior preservation (DreamBooth eq. 2)
    class_prompt: str | None = _f(
        None, 'class prompt without the identifier, e.g. "a photo of a cat"; turns prior preservation on'
    )
    class_dir: str | None = _f(None, "folder of class images; missing ones are generated with the base model")
    num_class_images: int = _f(100, "number of class images prior preservation uses")
    prior_loss_weight: float = _f(1.0, "lambda: weight of the class (prior) loss")
    class_inference_steps: int = _f(30, "denoising steps when generating class images")
    class_guidance: float = _f(7.5, "guidance scale when generating class images")
    class_batch_size: int = _f(4, "images per batch when generating class images")
    # method
    method: str = _f(
        "lora",
        "what trains: LoRA adapters, the full UNet (full), or a new token's embedding (textual-inversion)",
        choices=("lora", "full", "textual-inversion"),
    )
    rank: int = _f(16, "LoRA rank")
    lora_alpha: float | None = _f(None, "LoRA alpha (default: the rank, i.e. scale 1)")
    lora_targets: str = _f(
        "attn",
        "comma-separated UNet modules for LoRA: groups " + ", ".join(LORA_TARGET_GROUPS) + " or module-name suffixes",
    )
    lora_dropout: float = _f(0.0, "dropout on the LoRA path")
    use_dora: bool = _f(
        False,
        "DoRA (Liu et al., 2024): LoRA on the direction of each weight plus a trained magnitude per output; "
        "closer to full fine-tuning at the same rank, ~10-20 %% slower per step",
    )
    zero_terminal_snr: bool = _f(
        False,
        "rescale the noise schedule to zero terminal SNR (Lin et al., 2024; v-prediction models such as SD 2.x): "
        "the model learns to draw from pure noise; generate with --zero-terminal-snr too",
    )
    init_lora: str | None = _f(
        None,
        "start from a trained LoRA (diffusers or kohya/AUTOMATIC1111 .safetensors, a run or checkpoint folder); "
        "its rank, alpha and targets replace --rank, --lora-alpha and --lora-targets",
    )
    train_text_encoder: bool = _f(
        False, "also train the text encoder (LoRA on its attention projections; all of it with --method full)"
    )
    train_identifier_embedding: bool = _f(
        False,
        "pivotal tuning (lora): also learn the identifier's input embedding, as a new token <sks> that starts "
        "as sks and that prompts' sks becomes; saved as learned_embeds.safetensors and bundled in the kohya file",
    )
    identifier_lr: float = _f(5e-4, "learning rate of the identifier's embedding (--train-identifier-embedding)")
    token: str | None = _f(None, 'textual inversion: the new placeholder token, e.g. "<sks-cat>"')
    initializer_token: str | None = _f(
        None, "textual inversion: a one-token word the new embedding starts from, e.g. cat"
    )
    num_vectors: int = _f(1, "textual inversion: embedding vectors the placeholder stands for")
    text_encoder_lr: float = _f(1e-5, "learning rate of the text-encoder LoRA")
    text_encoder_2_lr: float | None = _f(
        None, "SDXL: learning rate of the second text encoder (default: --text-encoder-lr)"
    )
    # optimisation
    learning_rate: float | None = _f(
        None, "learning rate (default by method: lora 1e-4, full 5e-6, textual-inversion 5e-4 x batch)"
    )
    lr_scheduler: str = _f("constant_with_warmup", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int | None = _f(None, f"warmup steps (default {DEFAULT_WARMUP}; 'constant' takes none)")
    max_steps: int | None = _f(
        None, "optimizer steps in all (default by method: lora 2000, full 1000, textual-inversion 3000)"
    )
    batch_size: int = _f(1, "instance images per step (as many class images are added)")
    ema_decay: float | None = _f(
        None,
        "keep an exponential moving average of the trained weights (0.999-0.9999; warmed up as diffusers' "
        "EMAModel does) and save it beside the raw ones, in OUTPUT/ema/ (generate with --lora OUTPUT/ema)",
    )
    snr_gamma: float | None = _f(
        None,
        "min-SNR loss weighting (Hang et al., 2023): each example's loss times min(SNR, G)/SNR (v-prediction: "
        "/(SNR + 1)); 5 is the paper's value. Faster convergence, less weight on the nearly clean timesteps",
    )
    noise_offset: float = _f(
        0.0,
        "offset noise: add X x a random constant per image and channel to the noise, so the model can learn "
        "very dark or bright images (0.05-0.1)",
    )
    input_perturbation: float = _f(
        0.0,
        "perturb the noise the input is made from (not the target) by X x fresh noise (Ning et al., 2023; 0.1)",
    )
    gradient_accumulation: int = _f(1, "micro-batches per optimizer step")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 turns clipping off)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_weight_decay: float = _f(1e-2, "AdamW weight decay")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    adam_8bit: bool = _f(False, "8-bit AdamW from bitsandbytes (CUDA only)")
    mixed_precision: str = _f("no", "mixed precision through accelerate", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = _f(False, "trade compute for memory in the UNet (and text encoder)")
    num_processes: int = _f(
        1,
        "train on N processes of this machine (one per GPU; on a CPU, gloo processes): each takes --batch-size "
        "examples per step, gradients are averaged (multi-node: accelerate launch -m dreambooth train)",
    )
    seed: int = _f(0, "seed of everything random in the run")
    skip_nonfinite: bool = _f(
        False, "skip a step whose loss or gradient is not finite (counted in train_log.csv) instead of stopping"
    )
    # images
    resolution: int | None = _f(
        None, "training resolution in pixels, divisible by 8 (default: the model's native size, 512 for SD 1.x)"
    )
    buckets: bool = _f(
        False,
        "aspect-ratio bucketing: each photo trains at about --resolution^2 pixels in the shape nearest its own "
        "(sides from half to twice --resolution), not cropped to a square; batches come from one bucket",
    )
    random_crop: bool = _f(False, "random instead of centre crops (needs --no-cache)")
    random_flip: bool = _f(False, "flip images horizontally at random")
    no_cache: bool = _f(False, "run the VAE and text encoder every step instead of caching (for comparison)")
    # checkpoints
    checkpoint_every: int = _f(500, "save a resumable checkpoint every N steps")
    keep_checkpoints: int | None = _f(None, "keep only the last N checkpoints")
    resume: str | None = _f(None, "continue a run: 'latest' or a checkpoint folder")
    overwrite: bool = _f(False, "replace a finished run in --output-dir")
    # validation images while training
    validation_prompt: list[str] = _f([], "prompt to render while training (repeatable)")
    validation_every: int | None = _f(None, "render validation images every N steps (default: --checkpoint-every)")
    validation_seeds: list[int] = _f([0, 1], "seeds of the validation images")
    validation_inference_steps: int = _f(25, "denoising steps of the validation images")
    validation_guidance: float = _f(7.5, "guidance scale of the validation images")
    save_format: str = _f(
        "diffusers",
        "LoRA file layout: diffusers (pytorch_lora_weights.safetensors), kohya (RUN-NAME.safetensors, for "
        "AUTOMATIC1111/ComfyUI/sd-scripts) or both",
        choices=("diffusers", "kohya", "both"),
    )
    dora_for: str = _f(
        "comfyui",
        "with --use-dora and a kohya file: write its dora_scale for the program that loads it, which then merges "
        "it as peft does (comfyui: also Forge; lycoris); AUTOMATIC1111 cannot merge peft's DoRA right (refused)",
        choices=("comfyui", "lycoris", "automatic1111"),
    )
    report_to: str = _f(
        "none",
        "also log losses, learning rate and validation images to TensorBoard (OUTPUT/logs)",
        choices=("none", "tensorboard"),
    )

    def __post_init__(self) -> None:
        d = METHOD_DEFAULTS.get(self.method, METHOD_DEFAULTS["lora"])
        if self.learning_rate is None:
            scale = self.batch_size * self.gradient_accumulation if self.method == "textual-inversion" else 1
            self.learning_rate = d["learning_rate"] * scale
        if self.max_steps is None:
            self.max_steps = d["max_steps"]

    @property
    def warmup_steps(self) -> int:
        if self.lr_warmup_steps is not None:
            return self.lr_warmup_steps
        return 0 if self.lr_scheduler == "constant" else METHOD_DEFAULTS[self.method]["warmup"]

    @property
    def prior_preservation(self) -> bool:
        return self.class_prompt is not None

    @property
    def unet_targets(self) -> list[str]:
        out: list[str] = []
        for name in (t.strip() for t in self.lora_targets.split(",")):
            for target in LORA_TARGET_GROUPS.get(name, (name,)):
                if target and target not in out:
                    out.append(target)
        return out

    def validate(self) -> None:
        """Checks that need no file and no model; raise UserError naming the flag."""
        if self.concepts:
            given = [f for f in ("instance_dir", "instance_prompt", "class_prompt", "class_dir") if getattr(self, f)]
            if given:
                raise UserError(f"--{flag_name(given[0])}: not with --concepts (each concept in the file has its own)")
            if self.method == "textual-inversion":
                raise UserError("--concepts: for --method lora or full (Textual Inversion learns one token)")
        _check_required(self, skip=("instance_dir", "instance_prompt") if self.concepts else ())
        checks = [
            (self.rank >= 1, "--rank", f"must be at least 1, got {self.rank}"),
            (0 < self.learning_rate <= 1, "--learning-rate", f"must be > 0 and at most 1, got {self.learning_rate}"),
            (
                0 < self.text_encoder_lr <= 1,
                "--text-encoder-lr",
                f"must be > 0 and at most 1, got {self.text_encoder_lr}",
            ),
            (
                self.text_encoder_2_lr is None or self.text_encoder_2_lr > 0,
                "--text-encoder-2-lr",
                f"must be > 0, got {self.text_encoder_2_lr}",
            ),
            (self.lora_alpha is None or self.lora_alpha > 0, "--lora-alpha", f"must be > 0, got {self.lora_alpha}"),
            (0 <= self.lora_dropout < 1, "--lora-dropout", f"must be in [0, 1), got {self.lora_dropout}"),
            (
                self.resolution is None or (self.resolution > 0 and self.resolution % 8 == 0),
                "--resolution",
                f"must be a positive multiple of 8, got {self.resolution}",
            ),
            (self.max_steps >= 1, "--max-steps", f"must be at least 1, got {self.max_steps}"),
            (self.batch_size >= 1, "--batch-size", f"must be at least 1, got {self.batch_size}"),
            (self.num_processes >= 1, "--num-processes", f"must be at least 1, got {self.num_processes}"),
            (
                self.ema_decay is None or 0 < self.ema_decay < 1,
                "--ema-decay",
                f"must be between 0 and 1, got {self.ema_decay}",
            ),
            (
                not (self.use_dora and self.save_format != "diffusers" and self.dora_for == "automatic1111"),
                "--dora-for",
                "automatic1111: " + A1111_DORA,
            ),
            (
                not (self.use_dora and self.save_format == "kohya"),
                "--save-format",
                "kohya alone cannot hold a DoRA run that diffusers (and this tool) loads; use both",
            ),
            (
                not self.train_identifier_embedding or (self.method == "lora" and not self.concepts),
                "--train-identifier-embedding",
                "for --method lora with one concept (Textual Inversion learns a token by itself)",
            ),
            (0 < self.identifier_lr <= 1, "--identifier-lr", f"must be > 0 and at most 1, got {self.identifier_lr}"),
            (0 <= self.caption_dropout < 1, "--caption-dropout", f"must be in [0, 1), got {self.caption_dropout}"),
            (self.snr_gamma is None or self.snr_gamma > 0, "--snr-gamma", f"must be > 0, got {self.snr_gamma}"),
            (self.noise_offset >= 0, "--noise-offset", f"must be >= 0, got {self.noise_offset}"),
            (self.input_perturbation >= 0, "--input-perturbation", f"must be >= 0, got {self.input_perturbation}"),
            (
                self.gradient_accumulation >= 1,
                "--gradient-accumulation",
                f"must be at least 1, got {self.gradient_accumulation}",
            ),
            (self.max_grad_norm >= 0, "--max-grad-norm", f"must be >= 0, got {self.max_grad_norm}"),
            (self.checkpoint_every >= 1, "--checkpoint-every", f"must be at least 1, got {self.checkpoint_every}"),
            (
                self.keep_checkpoints is None or self.keep_checkpoints >= 1,
                "--keep-checkpoints",
                f"must be at least 1, got {self.keep_checkpoints}",
            ),
            (self.num_class_images >= 1, "--num-class-images", f"must be at least 1, got {self.num_class_images}"),
            (self.prior_loss_weight >= 0, "--prior-loss-weight", f"must be >= 0, got {self.prior_loss_weight}"),
            (self.class_batch_size >= 1, "--class-batch-size", f"must be at least 1, got {self.class_batch_size}"),
            (
                self.class_inference_steps >= 1,
                "--class-inference-steps",
                f"must be at least 1, got {self.class_inference_steps}",
            ),
            (bool(self.unet_targets), "--lora-targets", "names no module"),
            (
                self.lr_warmup_steps is None or self.lr_warmup_steps >= 0,
                "--lr-warmup-steps",
                f"must be >= 0, got {self.lr_warmup_steps}",
            ),
            (self.concepts is not None or bool(self.instance_prompt.strip()), "--instance-prompt", "is empty"),
            (self.num_vectors >= 1, "--num-vectors", f"must be at least 1, got {self.num_vectors}"),
            (
                self.validation_every is None or self.validation_every >= 1,
                "--validation-every",
                f"must be at least 1, got {self.validation_every}",
            ),
            (bool(self.validation_seeds), "--validation-seeds", "names no seed"),
            (
                self.validation_inference_steps >= 1,
                "--validation-inference-steps",
                f"must be at least 1, got {self.validation_inference_steps}",
            ),
        ]
        for ok, flag, problem in checks:
            if not ok:
                raise UserError(f"{flag}: {problem}")
        if self.lr_scheduler == "constant" and (self.lr_warmup_steps or 0) > 0:
            raise UserError(
                f"--lr-warmup-steps {self.lr_warmup_steps}: the 'constant' scheduler has no warmup; "
                "use --lr-scheduler constant_with_warmup (or linear, cosine) to apply it"
            )
        if self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            given = "" if self.lr_warmup_steps is not None else " (the default)"
            raise UserError(
                f"--lr-warmup-steps {self.warmup_steps}{given}: must be less than --max-steps {self.max_steps}; "
                "give a shorter warmup or --lr-scheduler constant"
            )
        if self.class_prompt is not None and self.class_dir is None:
            raise UserError("--class-prompt: prior preservation needs --class-dir (where class images are kept)")
        if self.class_dir is not None and self.class_prompt is None:
            raise UserError("--class-dir: given without --class-prompt (the prompt the class images stand for)")
        self._validate_method()
        if self.random_crop and not self.no_cache:
            raise UserError("--random-crop: cached latents hold one crop per image; add --no-cache to crop at random")

    def _validate_method(self) -> None:
        lora_only = {
            "rank": 16,
            "lora_alpha": None,
            "lora_targets": "attn",
            "lora_dropout": 0.0,
            "save_format": "diffusers",
            "dora_for": "comfyui",
            "init_lora": None,
        }
        if self.method != "lora":
            for key, default in lora_only.items():
                if getattr(self, key) != default:
                    raise UserError(f"--{flag_name(key)}: a LoRA setting, and --method is {self.method}")
        ti = {"token": self.token, "initializer_token": self.initializer_token}
        if self.method == "textual-inversion":
            for key, value in ti.items():
                if not value:
                    raise UserError(f"--{flag_name(key)}: required with --method textual-inversion")
            if self.token.strip() != self.token or " " in self.token:
                raise UserError(f"--token {self.token!r}: must be one word without spaces")
        else:
            for key, value in ti.items():
                if value:
                    raise UserError(f"--{flag_name(key)}: a textual-inversion setting, and --method is {self.method}")


def _check_required(cfg: Any, skip: tuple = ()) -> None:
    for f in dataclasses.fields(cfg):
        if f.metadata.get("required") and f.name not in skip and getattr(cfg, f.name) in (None, ""):
            raise UserError(f"--{flag_name(f.name)}: required (as a flag or as '{f.name}' in the config file)")


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of an annotation such as `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """Check (and lightly convert) one value against the field's type and choices; raise UserError."""
    value = _convert(cls, key, value, source)
    choices = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"{source}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _convert(cls: type, key: str, value: Any, source: str) -> Any:
    tp, optional = _base_type(_field_types(cls)[key])
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if elem is not str else [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: must be a list of {elem.__name__}, got {value!r}")
        return [_scalar(elem, v, source) for v in value]
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: must not be empty")
    return _scalar(tp, value, source)


def _scalar(tp: type, value: Any, source: str) -> Any:
    if value is None:
        raise UserError(f"{source}: must not be empty")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{source}: must be {'an ' if tp is int else 'a '}{tp.__name__}, got {value!r}")


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a config file into {field: value}; unknown keys and wrong types are errors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: must be a mapping of keys to values")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"--config {path}: unknown key '{key}'")
        out[name] = coerce(cls, name, value, f"--config {path}: '{key}'")
    return out


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field; defaults are suppressed so that only given flags override the file."""
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(types_[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f.metadata.get("help", "")
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if default not in (None, False, []) and tp is not bool:
            help_ += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if typing.get_origin(tp) is list:
            (elem,) = typing.get_args(tp)
            if f.metadata.get("nargs"):  # --subjects A B C
                parser.add_argument(f"--{flag_name(f.name)}", nargs=f.metadata["nargs"], metavar="DIR", **kw)
            elif elem is str:  # repeatable: --prompt A --prompt B
                parser.add_argument(f"--{flag_name(f.name)}", action="append", metavar="TEXT", **kw)
            else:  # comma-separated: --validation-seeds 0,1
                parser.add_argument(f"--{flag_name(f.name)}", type=str, metavar=f"{elem.__name__.upper()},...", **kw)
        elif tp is bool:
            action = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
            parser.add_argument(f"--{flag_name(f.name)}", action=action, **kw)
        else:
            if "choices" in f.metadata:
                kw["help"] += f" [{' | '.join(f.metadata['choices'])}]"
            parser.add_argument(f"--{flag_name(f.name)}", type=str, metavar=tp.__name__.upper(), **kw)


def build(cls: type, *layers: dict[str, Any]) -> Any:
    """Merge defaults < layers (in order) into a config object; flag values are type-checked here."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    values = {key: coerce(cls, key, value, f"--{flag_name(key)}") for key, value in merged.items()}
    return cls(**values)


def from_namespace(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(ns).items() if k in names}


SCHEDULER_NAMES = ("ddim", "ddpm", "pndm", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "unipc")
# Karras sigmas would start from the (near) infinite sigma of a zero-SNR schedule; PNDM has no such option.
ZERO_SNR_SCHEDULERS = ("ddim", "ddpm", "euler", "euler-a", "dpm++2m", "unipc")
DTYPES = ("auto", "fp32", "fp16", "bf16")


@dataclasses.dataclass
class SamplingConfig:
    """What makes one image: shared by generate, grid and evaluation."""

    model: str | None = _f(
        None, "base model: hub id, local diffusers folder or single-file .safetensors checkpoint", required=True
    )
    model_config: str | None = _model_config_field()
    allow_pickle: bool = _allow_pickle_field()
    lora: str | None = _f(None, "trained LoRA: a run folder, a checkpoint folder or a .safetensors file")
    embedding: str | None = _f(None, "a Textual Inversion embedding (learned_embeds.safetensors, or its run folder)")
    prompt: list[str] = _f([], 'prompt (repeatable), e.g. "a photo of sks cat in a bucket"')
    negative_prompt: str = _f("", "negative prompt")
    lora_scale_unet: float = _f(1.0, "strength of the LoRA in the UNet")
    lora_scale_text_encoder: float = _f(1.0, "strength of the LoRA in the text encoder")
    guidance: float = _f(7.5, "classifier-free guidance scale (CFG)")
    steps: int = _f(30, "denoising steps")
    scheduler: str = _f("dpm++2m-karras", "sampler", choices=SCHEDULER_NAMES)
    seed: int = _f(0, "seed of the first image; image i uses seed + i")
    width: int | None = _f(None, "image width (default: the model's native size)")
    height: int | None = _f(None, "image height (default: the model's native size)")
    dtype: str = _f("auto", "weights' precision (auto: fp16 on a GPU, fp32 on the CPU)", choices=DTYPES)
    zero_terminal_snr: bool = _f(
        False,
        "sample with the zero-terminal-SNR schedule, trailing timesteps and guidance rescale 0.7 (Lin et al., "
        "2024), for models trained with --zero-terminal-snr",
    )

    def validate(self) -> None:
        _check_required(self)
        if self.zero_terminal_snr and self.scheduler not in ZERO_SNR_SCHEDULERS:
            why = "spends its steps next to pure noise" if "karras" in self.scheduler else "has no such schedule"
            raise UserError(
                f"--zero-terminal-snr: --scheduler {self.scheduler} {why} on a zero-SNR schedule; give --scheduler "
                + " or ".join(ZERO_SNR_SCHEDULERS)
            )
        checks = [
            (self.steps >= 1, "--steps", f"must be at least 1, got {self.steps}"),
            (self.guidance >= 0, "--guidance", f"must be >= 0, got {self.guidance}"),
            (
                self.width is None or (self.width > 0 and self.width % 8 == 0),
                "--width",
                f"must be a positive multiple of 8, got {self.width}",
            ),
            (
                self.height is None or (self.height > 0 and self.height % 8 == 0),
                "--height",
                f"must be a positive multiple of 8, got {self.height}",
            ),
        ]
        for ok, flag, problem in checks:
            if not ok:
                raise UserError(f"{flag}: {problem}")


@dataclasses.dataclass
class GenerateConfig(SamplingConfig):
    prompts_file: str | None = _f(None, "a text file with one prompt per line")
    num_images: int = _f(4, "images per prompt")
    batch_size: int = _f(1, "images per forward pass (1 makes every image exactly reproducible alone)")
    output_dir: str = _f("outputs", "where images and their JSON sidecars are written")
    from_image: str | None = _f(None, "repeat the generation that made this PNG (flags given too override it)")
    lora_dir: str | None = _f(
        None,
        "where --from-image finds the LoRA a PNG's prompt names (<lora:NAME:...>) when the PNG does not say "
        "where it is (AUTOMATIC1111's and other tools' images): by AUTOMATIC1111's hash, else by name "
        "(default: the current folder)",
    )
    no_fuse: bool = _f(False, "keep the LoRA unfused (fusing makes generating with a LoRA as fast as without)")
    no_selection: bool = _f(
        False, "with --lora RUN: use its final weights, not the checkpoint `dreambooth select` chose"
    )

    def validate(self) -> None:
        super().validate()
        if not self.prompt:
            raise UserError("--prompt: required (or --prompts-file, or --from-image)")
        if self.num_images < 1:
            raise UserError(f"--num-images: must be at least 1, got {self.num_images}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size: must be at least 1, got {self.batch_size}")


@dataclasses.dataclass
class GridConfig(SamplingConfig):
    x: str | None = _f(
        None, "X axis: name=values, e.g. guidance=3,5,7.5 or seed=0-7 or checkpoint=500,1000", required=True
    )
    y: str | None = _f(None, "Y axis, as --x")
    z: str | None = _f(None, "Z axis: one grid per value")
    output_dir: str = _f("grids", "where the grids, single images and index.html are written")
    cache_dir: str | None = _f(None, "cell cache (default: OUTPUT/cells); shared by grids that overlap")


@dataclasses.dataclass
class EvaluateConfig(SamplingConfig):
    model: str | None = _f(None, "base model: with it, generate the protocol's images (DreamBench prompts) first")
    prompt: list[str] = _f([], "the prompt of every generated image that carries none")
    real: str | None = _f(None, "folder of the real subject photos", required=True)
    generated: str | None = _f(None, "folder of generated images to score (their prompts from PNG metadata)")
    class_generated: str | None = _f(None, "folder of images generated for the class prompt (for PRES)")
    prompts_file: str | None = _f(None, "one prompt per generated image (sorted by name), or one for all")
    identifier: str = _f("sks", "the rare identifier, removed from prompts before CLIP-T")
    keep_identifier: bool = _f(False, "score CLIP-T with the identifier left in the prompt")
    class_noun: str | None = _f(None, "the subject's class noun (dog, backpack, ...), for the protocol")
    kind: str = _f(
        "auto",
        "DreamBench prompt set: live (pets) or object; auto: live for cat and dog",
        choices=("auto", "live", "object"),
    )
    prompts: str = _f("dreambench", "the protocol's prompts: dreambench or a file of templates ({identifier}, {class})")
    images_per_prompt: int = _f(4, "images generated per prompt (the paper uses 4)")
    num_class_images: int = _f(16, "images generated for the class prompt, for PRES")
    class_prompt: str | None = _f(None, "the class prompt for PRES (default: 'a {class noun}')")
    dino_model: str = _f("facebook/dino-vits16", "DINO extractor: hub id or local folder")
    clip_model: str = _f("openai/clip-vit-base-patch32", "CLIP extractor: hub id or local folder")
    output_dir: str = _f("evaluation", "where metrics.json, per_prompt.csv, metrics.md (and generated images) go")
    cache_dir: str | None = _f(None, "embedding cache (default: OUTPUT/embeddings)")
    embed_batch_size: int = _f(16, "images per batch through the extractors")

    def validate(self) -> None:
        _check_required(self)
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


@dataclasses.dataclass
class SelectConfig:
    run: str | None = _f(None, "a training run's output folder", required=True)
    real: str | None = _f(None, "folder of the real subject photos (default: the run's --instance-dir)")
    prompts: int = _f(5, "how many DreamBench prompts (spread over the 25) each candidate is scored on")
    identifier: str | None = _f(None, "the identifier (default: read from the run's instance prompt)")
    class_noun: str | None = _f(None, "the class noun (default: read from the run's class or instance prompt)")
    kind: str = _f("auto", "DreamBench prompt set", choices=("auto", "live", "object"))
    images_per_prompt: int = _f(4, "images per prompt and candidate")
    num_class_images: int = _f(8, "class-prompt images per candidate, for PRES (0: no PRES)")
    scales: list[float] = _f([], "LoRA UNet scales to try with every checkpoint, e.g. 0.6,0.8,1.0 (default: 1.0)")
    guidances: list[float] = _f([], "guidance scales to try, e.g. 5,7.5 (default: 7.5)")
    objective: str = _f(
        "dino=1,clip_t=1", "weights of the min-max-normalised metrics whose sum picks the recommendation"
    )
    steps: int = _f(30, "denoising steps")
    scheduler: str = _f("dpm++2m-karras", "sampler", choices=SCHEDULER_NAMES)
    seed: int = _f(0, "seed of the first image of each prompt")
    dtype: str = _f("auto", "weights' precision", choices=DTYPES)
    dino_model: str = _f("facebook/dino-vits16", "DINO extractor: hub id or local folder")
    clip_model: str = _f("openai/clip-vit-base-patch32", "CLIP extractor: hub id or local folder")
    embed_batch_size: int = _f(16, "images per batch through the extractors")

    def validate(self) -> None:
        _check_required(self)
        if not 1 <= self.prompts <= 25:
            raise UserError(f"--prompts: must be between 1 and 25, got {self.prompts}")
        if self.images_per_prompt < 1 or self.num_class_images < 0:
            raise UserError("--images-per-prompt: must be at least 1; --num-class-images: must be >= 0")


@dataclasses.dataclass
class CompareConfig:
    subjects: list[str] = _f([], "subject photo folders (a DreamBench subject's name gives its class)", nargs="+")
    methods: str = _f("lora,full,textual-inversion", "methods to compare, comma-separated")
    model: str | None = _f(
        None, "base model: hub id, local diffusers folder or single-file .safetensors checkpoint", required=True
    )
    model_config: str | None = _model_config_field()
    allow_pickle: bool = _allow_pickle_field()
    prompts: str = _f("dreambench", "dreambench (all 25 of the subject's kind) or N (N of them, spread)")
    output: str = _f("comparison", "where runs, images, the table and the grids go")
    class_noun: str | None = _f(None, "class noun of subjects that are not DreamBench's")
    identifier: str = _f("sks", "the rare identifier (textual inversion learns <identifier-subject>)")
    max_steps: int | None = _f(None, "training steps for every method (default: each method's own)")
    resolution: int | None = _f(None, "training and generation resolution (default: the model's native size)")
    num_class_images: int = _f(100, "class images for prior preservation (LoRA and full), and for PRES")
    images_per_prompt: int = _f(4, "images per prompt (the paper's protocol: 4)")
    steps: int = _f(30, "denoising steps when generating")
    guidance: float = _f(7.5, "guidance scale when generating")
    seed: int = _f(0, "seed of training and of the first image of each prompt")
    mixed_precision: str = _f("no", "mixed precision for training", choices=MIXED_PRECISION)
    dino_model: str = _f("facebook/dino-vits16", "DINO extractor: hub id or local folder")
    clip_model: str = _f("openai/clip-vit-base-patch32", "CLIP extractor: hub id or local folder")

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def validate(self) -> None:
        _check_required(self)
        if not self.subjects:
            raise UserError("--subjects: required (one or more folders of subject photos)")
        known = METHOD_DEFAULTS
        for m in self.method_list:
            if m not in known:
                raise UserError(f"--methods {self.methods}: unknown method '{m}' (one of {', '.join(known)})")
        if not self.method_list:
            raise UserError(f"--methods {self.methods}: names no method")
        if self.prompts != "dreambench" and not (self.prompts.isdigit() and 1 <= int(self.prompts) <= 25):
            raise UserError(f"--prompts {self.prompts}: 'dreambench' or a number from 1 to 25")
