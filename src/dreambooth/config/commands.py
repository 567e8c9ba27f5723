"""The commands that score and compare runs: select, compare."""

from __future__ import annotations

import dataclasses

from ..errors import UserError
from ..methods import METHODS
from ..options import check_required, option
from .sampling import DTYPES, FAMILY_GUIDANCE, SAMPLER_HELP, SCHEDULER_NAMES, clip_model_field, dino_model_field
from .train import MIXED_PRECISION, allow_pickle_field, model_config_field


@dataclasses.dataclass
class SelectConfig:
    run: str | None = option(None, "a training run's output folder", required=True)
    real: str | None = option(None, "folder of the real subject photos (default: the run's --instance-dir)")
    prompts: int = option(5, "how many DreamBench prompts (spread over the 25) each candidate is scored on")
    identifier: str | None = option(None, "the identifier (default: read from the run's instance prompt)")
    class_noun: str | None = option(None, "the class noun (default: read from the run's class or instance prompt)")
    kind: str = option("auto", "DreamBench prompt set", choices=("auto", "live", "object"))
    images_per_prompt: int = option(4, "images per prompt and candidate")
    num_class_images: int = option(8, "class-prompt images per candidate, for PRES (0: no PRES)")
    scales: list[float] = option([], "LoRA UNet scales to try with every checkpoint, e.g. 0.6,0.8,1.0 (default: 1.0)")
    guidances: list[float] = option([], "guidance scales to try, e.g. 5,7.5" + FAMILY_GUIDANCE)
    objective: str = option(
        "dino=1,clip_t=1", "weights of the min-max-normalised metrics whose sum picks the recommendation"
    )
    steps: int = option(30, "denoising steps")
    width: int | None = option(
        None, "width of the scored images (default: the model's native size)", gt=0, multiple_of=8
    )
    height: int | None = option(
        None, "height of the scored images (default: the model's native size)", gt=0, multiple_of=8
    )
    scheduler: str | None = option(None, SAMPLER_HELP, choices=SCHEDULER_NAMES)
    seed: int = option(0, "seed of the first image of each prompt")
    dtype: str = option("auto", "weights' precision", choices=DTYPES)
    dino_model: str = dino_model_field()
    clip_model: str = clip_model_field()
    embed_batch_size: int = option(16, "images per batch through the extractors")

    def validate(self) -> None:
        check_required(self)
        if not 1 <= self.prompts <= 25:
            raise UserError(f"--prompts: must be between 1 and 25, got {self.prompts}")
        if self.images_per_prompt < 1 or self.num_class_images < 0:
            raise UserError("--images-per-prompt: must be at least 1; --num-class-images: must be >= 0")


@dataclasses.dataclass
class CompareConfig:
    subjects: list[str] = option([], "subject photo folders (a DreamBench subject's name gives its class)", nargs="+")
    methods: str = option(",".join(METHODS), "methods to compare, comma-separated")
    model: str | None = option(
        None, "base model: hub id, local diffusers folder or single-file .safetensors checkpoint", required=True
    )
    model_config: str | None = model_config_field()
    allow_pickle: bool = allow_pickle_field()
    prompts: str = option("dreambench", "dreambench (all 25 of the subject's kind) or N (N of them, spread)")
    output: str = option("comparison", "where runs, images, the table and the grids go")
    class_noun: str | None = option(None, "class noun of subjects that are not DreamBench's")
    identifier: str = option("sks", "the rare identifier (textual inversion learns <identifier-subject>)")
    max_steps: int | None = option(None, "training steps for every method (default: each method's own)")
    resolution: int | None = option(None, "training and generation resolution (default: the model's native size)")
    num_class_images: int = option(100, "class images for prior preservation (LoRA and full), and for PRES")
    images_per_prompt: int = option(4, "images per prompt (the paper's protocol: 4)")
    steps: int = option(30, "denoising steps when generating")
    guidance: float | None = option(None, "guidance scale when generating" + FAMILY_GUIDANCE)
    seed: int = option(0, "seed of training and of the first image of each prompt")
    mixed_precision: str = option("no", "mixed precision for training", choices=MIXED_PRECISION)
    dino_model: str = dino_model_field()
    clip_model: str = clip_model_field()

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def validate(self) -> None:
        check_required(self)
        if not self.subjects:
            raise UserError("--subjects: required (one or more folders of subject photos)")
        known = METHODS
        for m in self.method_list:
            if m not in known:
                raise UserError(f"--methods {self.methods}: unknown method '{m}' (one of {', '.join(known)})")
        if not self.method_list:
            raise UserError(f"--methods {self.methods}: names no method")
        if self.prompts != "dreambench" and not (self.prompts.isdigit() and 1 <= int(self.prompts) <= 25):
            raise UserError(f"--prompts {self.prompts}: 'dreambench' or a number from 1 to 25")
