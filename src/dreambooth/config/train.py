"""`dreambooth train`'s config: the run's data, the method (whose own options its module declares),
optimisation, images, checkpoints and validation. Bounds and choices are declared beside each field
(options.option); `validate` keeps the checks that involve several fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError
from ..families.base import WEIGHTING_SCHEMES
from ..methods import METHODS
from ..methods.lora import LoRAOptions
from ..methods.textual_inversion import TextualInversionOptions
from ..optimizers import OPTIMIZERS, ProdigyOptions
from ..options import check_bounds, check_required, flag_name, load_yaml, option
from ..quantize import KINDS as QUANTIZE_KINDS
from ..runs import CONFIG_FILE

FAMILY_GUIDANCE = " (default: the model family's: 7.5; SD3 7.0; FLUX.1 3.5)"  # (help texts)

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")


def model_config_field():
    return option(
        None,
        "with a single-file --model: a diffusers folder or hub id of the same architecture, for its configs, "
        "tokenizer and scheduler (default: the one diffusers infers from the file's keys)",
    )


def allow_pickle_field():
    return option(False, "accept a pickled --model checkpoint (.ckpt, .pt, .bin), which can run code when loaded")


@dataclasses.dataclass
class TrainData:
    """What the run trains on: the base model, the subject's photos and prompts, the class prior."""

    model: str | None = option(
        None,
        "base model: hub id (stable-diffusion-v1-5/stable-diffusion-v1-5), a local diffusers folder or a "
        "single-file .safetensors checkpoint",
        required=True,
    )
    model_config: str | None = model_config_field()
    allow_pickle: bool = allow_pickle_field()
    instance_dir: str | None = option(None, "folder with the 3-5 photos of the subject", required=True)
    concepts: str | None = option(
        None,
        "several concepts in one run: a YAML list of {instance_dir, instance_prompt[, class_prompt, class_dir, "
        "num_class_images]}, taken in turn (replaces --instance-dir, --instance-prompt and the class flags)",
    )
    skip_bad_images: bool = option(
        False, "train on the usable photos of --instance-dir, leaving out (and naming) the ones that cannot be used"
    )
    instance_prompt: str | None = option(None, 'prompt with the identifier, e.g. "a photo of sks cat"', required=True)
    caption_identifier: str = option(
        "insert",
        "per-image captions (photo.txt beside photo.jpg) without the identifier: insert (the instance prompt "
        "is put in front) or require (refused)",
        choices=("insert", "require"),
    )
    identifier: str | None = option(
        None, "the rare identifier captions must name (default: the word before the class noun, e.g. sks)"
    )
    caption_dropout: float = option(
        0.0,
        "train this share of the photos with an empty prompt (keeps unconditional generation: 0.05-0.1)",
        ge=0,
        lt=1,
    )
    masked_loss: bool = option(
        False,
        "weigh the photos' loss by a mask of the subject (photo.mask.png beside photo.jpg, or the photo's alpha "
        "channel): its background counts --unmasked-weight, so it does not stick to the identifier",
    )
    unmasked_weight: float = option(0.1, "with --masked-loss: the loss weight outside the mask", ge=0, le=1)
    output_dir: str | None = option(
        None, "where the run writes its weights, checkpoints, config and log", required=True
    )
    # prior preservation (DreamBooth eq. 2)
    class_prompt: str | None = option(
        None, 'class prompt without the identifier, e.g. "a photo of a cat"; turns prior preservation on'
    )
    class_dir: str | None = option(None, "folder of class images; missing ones are generated with the base model")
    num_class_images: int = option(100, "number of class images prior preservation uses", ge=1)
    prior_loss_weight: float = option(1.0, "lambda: weight of the class (prior) loss", ge=0)
    class_inference_steps: int = option(30, "denoising steps when generating class images", ge=1)
    class_guidance: float | None = option(None, "guidance scale when generating class images" + FAMILY_GUIDANCE)
    class_batch_size: int = option(4, "images per batch when generating class images", ge=1)
    method: str = option(
        "lora",
        "what trains: LoRA adapters, the full UNet (full), or a new token's embedding (textual-inversion)",
        choices=tuple(METHODS),
    )


@dataclasses.dataclass
class TrainConfig(ProdigyOptions, TextualInversionOptions, LoRAOptions, TrainData):
    # for every method
    zero_terminal_snr: bool = option(
        False,
        "rescale the noise schedule to zero terminal SNR (Lin et al., 2024; v-prediction models such as SD 2.x): "
        "the model learns to draw from pure noise; generate with --zero-terminal-snr too",
    )
    train_text_encoder: bool = option(
        False, "also train the text encoder (LoRA on its attention projections; all of it with --method full)"
    )
    text_encoder_lr: float | None = option(
        None,
        "learning rate of the text-encoder LoRA (default: 1e-5; with --optimizer prodigy, --learning-rate)",
        gt=0,
        le=1,
    )
    text_encoder_2_lr: float | None = option(
        None, "SDXL: learning rate of the second text encoder (default: --text-encoder-lr)", gt=0
    )
    quantize_base: str | None = option(
        None,
        "load the frozen UNet/transformer (and T5) quantised, LoRA training on top (QLoRA): int8 (torchao, also "
        "on the CPU), fp8 (torchao, CUDA 8.9+) or nf4 (bitsandbytes, CUDA); about 1/2, 1/2 and 1/4 of bf16's memory",
        choices=QUANTIZE_KINDS,
    )
    # optimisation
    optimizer: str = option(
        "adamw",
        "adamw; adamw8bit (bitsandbytes, CUDA: Adam's moments in 8 bits); prodigy (estimates its own step size: "
        "learning rate 1.0); adafactor (factored second moment, little state: full fine-tuning on small cards); "
        "schedule-free-adamw (no schedule to choose)",
        choices=tuple(OPTIMIZERS),
    )
    learning_rate: float | None = option(
        None,
        "learning rate (default by method: lora 1e-4, full 5e-6, textual-inversion 5e-4 x batch; prodigy 1.0)",
        gt=0,
        le=1,
    )
    lr_scheduler: str = option("constant_with_warmup", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int | None = option(None, "warmup steps (default 500; 'constant' takes none)", ge=0)
    max_steps: int | None = option(
        None, "optimizer steps in all (default by method: lora 2000, full 1000, textual-inversion 3000)", ge=1
    )
    batch_size: int = option(1, "instance images per step (as many class images are added)", ge=1)
    ema_decay: float | None = option(
        None,
        "keep an exponential moving average of the trained weights (0.999-0.9999; warmed up as diffusers' "
        "EMAModel does) and save it beside the raw ones, in OUTPUT/ema/ (generate with --lora OUTPUT/ema)",
        gt=0,
        lt=1,
    )
    snr_gamma: float | None = option(
        None,
        "min-SNR loss weighting (Hang et al., 2023): each example's loss times min(SNR, G)/SNR (v-prediction: "
        "/(SNR + 1)); 5 is the paper's value. Faster convergence, less weight on the nearly clean timesteps",
        gt=0,
    )
    weighting_scheme: str | None = option(
        None,
        "flow matching (SD3, FLUX): how training timesteps are drawn and losses weighted, as diffusers' scripts do "
        "(default: logit_normal for SD3, none for FLUX)",
        choices=WEIGHTING_SCHEMES,
    )
    logit_mean: float | None = option(None, "flow matching, --weighting-scheme logit_normal: its mean (default 0)")
    logit_std: float | None = option(None, "flow matching, --weighting-scheme logit_normal: its std (default 1)", gt=0)
    mode_scale: float | None = option(None, "flow matching, --weighting-scheme mode: its scale (default 1.29)")
    guidance_scale: float | None = option(
        None,
        "guidance-distilled models (FLUX.1 [dev]): the guidance embedded in the model during training (default 3.5, as diffusers' FLUX script)",
        ge=0,
    )
    max_sequence_length: int | None = option(
        None,
        "models with a T5 text encoder (SD3, FLUX): its prompt length in tokens (default: SD3 77, FLUX 512)",
        ge=1,
        le=512,
    )
    noise_offset: float = option(
        0.0,
        "offset noise: add X x a random constant per image and channel to the noise, so the model can learn "
        "very dark or bright images (0.05-0.1)",
        ge=0,
    )
    input_perturbation: float = option(
        0.0,
        "perturb the noise the input is made from (not the target) by X x fresh noise (Ning et al., 2023; 0.1)",
        ge=0,
    )
    gradient_accumulation: int = option(1, "micro-batches per optimizer step", ge=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 turns clipping off)", ge=0)
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    adam_weight_decay: float = option(1e-2, "AdamW weight decay")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    adam_8bit: bool = option(False, "8-bit AdamW from bitsandbytes (CUDA only): --optimizer adamw8bit")
    mixed_precision: str = option("no", "mixed precision through accelerate", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = option(False, "trade compute for memory in the UNet (and text encoder)")
    num_processes: int = option(
        1,
        "train on N processes of this machine (one per GPU; on a CPU, gloo processes): each takes --batch-size "
        "examples per step, gradients are averaged (multi-node: accelerate launch -m dreambooth train)",
        ge=1,
    )
    fsdp: bool = option(
        False,
        "shard what trains (weights, gradients, optimizer states) across the --num-processes with torch's FSDP2, "
        "for models that do not fit one GPU; checkpoints are sharded, the final weights one ordinary file",
    )
    seed: int = option(0, "seed of everything random in the run")
    skip_nonfinite: bool = option(
        False, "skip a step whose loss or gradient is not finite (counted in train_log.csv) instead of stopping"
    )
    # images
    resolution: int | None = option(
        None,
        "training resolution in pixels, divisible by 8 (default: the model's native size, 512 for SD 1.x)",
        gt=0,
        multiple_of=8,
    )
    buckets: bool = option(
        False,
        "aspect-ratio bucketing: each photo trains at about --resolution^2 pixels in the shape nearest its own "
        "(sides from half to twice --resolution), not cropped to a square; batches come from one bucket",
    )
    random_crop: bool = option(False, "random instead of centre crops (needs --no-cache)")
    random_flip: bool = option(False, "flip images horizontally at random")
    no_cache: bool = option(False, "run the VAE and text encoder every step instead of caching (for comparison)")
    # checkpoints
    checkpoint_every: int = option(500, "save a resumable checkpoint every N steps", ge=1)
    keep_checkpoints: int | None = option(None, "keep only the last N checkpoints", ge=1)
    resume: str | None = option(None, "continue a run: 'latest' or a checkpoint folder")
    overwrite: bool = option(False, "replace a finished run in --output-dir")
    # validation images while training
    validation_loss_every: int | None = option(
        None,
        "every N steps (and at the last), the denoising loss on the photos and the first 8 class images at fixed "
        "noise and timesteps: the one loss curve that is not noise (train_log.csv's validation_loss columns)",
        ge=1,
    )
    validation_prompt: list[str] = option([], "prompt to render while training (repeatable)")
    validation_every: int | None = option(
        None, "render validation images every N steps (default: --checkpoint-every)", ge=1
    )
    validation_seeds: list[int] = option([0, 1], "seeds of the validation images")
    validation_inference_steps: int = option(25, "denoising steps of the validation images", ge=1)
    validation_guidance: float | None = option(None, "guidance scale of the validation images" + FAMILY_GUIDANCE)
    report_to: str = option(
        "none",
        "also log the config, losses, learning rate and validation images to TensorBoard (OUTPUT/logs), Weights & "
        "Biases (offline into OUTPUT/logs/wandb unless logged in) or both (all)",
        choices=("none", "tensorboard", "wandb", "all"),
    )

    def __post_init__(self) -> None:
        method = METHODS.get(self.method, METHODS["lora"])
        chosen = [o for o in OPTIMIZERS.values() if o.alias_option and getattr(self, o.alias_option)]
        if chosen and self.optimizer == type(self).__dataclass_fields__["optimizer"].default:
            self.optimizer = chosen[0].name  # an optimizer's older flag (--adam-8bit), --optimizer left as is
        optimizer = OPTIMIZERS.get(self.optimizer, OPTIMIZERS["adamw"])
        if self.learning_rate is None:
            self.learning_rate = optimizer.default_learning_rate or method.default_learning_rate(self)
        if self.text_encoder_lr is None:  # Prodigy's learning rates multiply its own step size: the same one
            self.text_encoder_lr = self.learning_rate if optimizer.default_learning_rate else 1e-5
        if self.max_steps is None:
            self.max_steps = method.defaults["max_steps"]

    @property
    def warmup_steps(self) -> int:
        if self.lr_warmup_steps is not None:
            return self.lr_warmup_steps
        return 0 if self.lr_scheduler == "constant" else METHODS[self.method].defaults["warmup"]

    @property
    def prior_preservation(self) -> bool:
        return self.class_prompt is not None

    def validate(self) -> None:
        """Checks that need no file and no model; raise UserError naming the flag."""
        if self.concepts:
            given = [f for f in ("instance_dir", "instance_prompt", "class_prompt", "class_dir") if getattr(self, f)]
            if given:
                raise UserError(f"--{flag_name(given[0])}: not with --concepts (each concept in the file has its own)")
        check_required(self, skip=("instance_dir", "instance_prompt") if self.concepts else ())
        check_bounds(self)
        method = METHODS[self.method]
        method.refuse_options_of_others(self, [m for m in METHODS.values() if m is not method])
        method.validate_options(self)
        optimizer = OPTIMIZERS[self.optimizer]
        for other in OPTIMIZERS.values():
            if other.alias_option and getattr(self, other.alias_option) and other is not optimizer:
                flag = flag_name(other.alias_option)
                raise UserError(f"--{flag}: is --optimizer {other.name}, and --optimizer is {self.optimizer}")
        optimizer.refuse_options_of_others(self, [o for o in OPTIMIZERS.values() if o is not optimizer])
        optimizer.validate_options(self)
        self._validate_together()

    def _validate_together(self) -> None:
        if self.unmasked_weight != 0.1 and not self.masked_loss:
            raise UserError(f"--unmasked-weight {self.unmasked_weight:g}: a --masked-loss setting; give --masked-loss")
        if self.concepts is None and not self.instance_prompt.strip():
            raise UserError("--instance-prompt: is empty")
        if not self.validation_seeds:
            raise UserError("--validation-seeds: names no seed")
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
        if self.random_crop and not self.no_cache:
            raise UserError("--random-crop: cached latents hold one crop per image; add --no-cache to crop at random")


def saved_config(run: str | Path) -> TrainConfig | None:
    """The config a run trained with (its config.yaml, `runs.CONFIG_FILE`), or None when it has none that
    reads."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return TrainConfig(**load_yaml(path, TrainConfig))
    except UserError:
        return None
