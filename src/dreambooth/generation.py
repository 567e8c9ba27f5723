"""Generating images with a base model and a trained LoRA: schedulers, per-component LoRA scales,
the fused fast path, deterministic seeds, and images that carry their settings."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from pathlib import Path

from PIL import Image

from . import io
from .config import GenerateConfig
from .errors import UserError
from .weights import embedding_file, lora_file, lora_name, model_identity, pivotal_embedding, replace_identifier, sha256

log = logging.getLogger(__name__)

ADAPTER = "subject"


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """Everything that decides one image (with the LoRA identified by its file's hash)."""

    model: str
    prompt: str
    seed: int
    width: int
    height: int
    negative_prompt: str = ""
    lora: str | None = None  # absolute path of the weights file
    lora_name: str | None = None
    lora_sha256: str | None = None
    lora_scale_unet: float = 1.0
    lora_scale_text_encoder: float = 1.0
    embedding: str | None = None  # absolute path of a Textual Inversion embedding
    embedding_sha256: str | None = None
    guidance: float = 7.5
    steps: int = 30
    scheduler: str = "dpm++2m-karras"
    zero_terminal_snr: bool = False
    max_sequence_length: int | None = None  # T5's prompt length (SD3, FLUX); None: the pipeline's

    def batch_key(self) -> tuple:
        """Images that agree on this can share one forward pass."""
        d = dataclasses.asdict(self)
        return tuple(v for k, v in d.items() if k not in ("prompt", "negative_prompt", "seed"))


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class Engine:
    """Holds one pipeline and changes as little as it can between requests: the same model and LoRA
    with other scales only re-weights the adapter; fusing (a fixed scale for a whole call) folds the
    LoRA into the weights so that it costs nothing per step."""

    def __init__(self, dtype: str = "auto", fuse: bool = True):
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # None (auto): the model family's precision on a GPU (fp16, or bf16 where fp16 overflows), fp32 on the CPU
        self.dtype = getattr(torch, DTYPES[dtype]) if dtype in DTYPES else None
        self.fuse = fuse
        self.pipe = None
        self.family = None  # the loaded model's (families.Family)
        self.state: tuple | None = None  # (model, embedding, lora or None, "fused"/"unfused"/None, scales)
        self.base_scheduler = None
        self._sizes: dict[str, int] = {}

    def native_size(self, model: str) -> int:
        """The model's own resolution (UNet sample size x VAE factor), read from its configs."""
        if model not in self._sizes:
            from .models import native_size

            self._sizes[model] = native_size(model)
        return self._sizes[model]

    def guidance_for(self, model: str) -> float:
        """The model family's guidance scale, for a request that names none."""
        from .models import default_guidance

        return default_guidance(model)

    def sampler_for(self, model: str, name: str | None) -> str:
        """The sampler to use: name, or the model family's default; one line when the family has no such."""
        from .models import family_of

        family = family_of(model)
        if name is None:
            return family.default_sampler
        if name not in family.samplers():
            raise UserError(f"--scheduler {name}: {family.label} samples with {', '.join(family.samplers())}")
        return name

    def sequence_length_for(self, model: str, length: int | None) -> int | None:
        """T5's prompt length, for a family with T5; one line for a family without."""
        from .models import family_of

        family = family_of(model)
        if length is not None and family.t5_tokenizer is None:
            raise UserError(f"--max-sequence-length: for models with a T5 text encoder, and {model} is {family.label}")
        return length

    def _base(self, model: str, embedding: str | None) -> None:
        """Make self.pipe the base model with the embedding, without LoRA (reloading only when a
        fused LoRA changed the weights, or another embedding is wanted)."""
        from .models import load_pipeline

        if self.pipe is not None and self.state[:2] == (model, embedding) and self.state[3] != "fused":
            if self.state[2] is not None:
                self.pipe.delete_adapters(ADAPTER)
            self.state = (model, embedding, None, None, None)
            return
        import torch

        from .models import family_of

        self.pipe = None
        self.family = family_of(model)
        auto = self.family.gpu_dtype if self.device == "cuda" else "fp32"
        self.pipe = load_pipeline(model, self.dtype or getattr(torch, DTYPES[auto])).to(self.device)
        self.base_scheduler = self.pipe.scheduler.config
        if embedding:
            self._load_embedding(embedding)
        self.state = (model, embedding, None, None, None)

    def _load_embedding(self, path: str) -> None:
        """A Textual Inversion file: one tensor named by its token, or one part per text encoder of the
        family (SDXL's clip_l and clip_g, named by the file's token or, as AUTOMATIC1111 does, its name)."""
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            keys, meta = list(f.keys()), f.metadata() or {}
        token = keys[0] if len(keys) == 1 and keys[0] not in ("emb_params", "string_to_param") else None
        parts = self.family.embedding_parts
        try:
            if parts and set(parts) <= set(keys):
                from safetensors.torch import load_file

                tensors = load_file(path)
                token = meta.get("token") or Path(path).stem
                for part, tok, te in zip(parts, self._tokenizers(), self._text_encoders()):
                    self.pipe.load_textual_inversion(tensors[part], token=token, text_encoder=te, tokenizer=tok)
            elif len(keys) > 1 and all(k not in ("emb_params", "string_to_param") for k in keys):
                raise ValueError(f"an embedding with one part per text encoder ({', '.join(keys)}) on {self.family}")
            else:
                self.pipe.load_textual_inversion(path, token=token)
        except (ValueError, RuntimeError, KeyError) as e:
            self.pipe, self.state = None, None
            raise UserError(f"--embedding {path}: does not fit the model ({str(e).splitlines()[0][:200]})") from None

    def _text_encoders(self) -> list:
        return [getattr(self.pipe, name) for name in self.family.text_encoders]

    def _tokenizers(self) -> list:
        return [getattr(self.pipe, name) for name in self.family.tokenizers]

    def prepare(self, s: ImageSettings):
        scales = (s.lora_scale_unet, s.lora_scale_text_encoder)
        active = s.lora is not None and scales != (0.0, 0.0)
        mode = None if not active else ("fused" if self.fuse else "unfused")
        want = (s.model, s.embedding, s.lora if active else None, mode, scales if active else None)
        if self.state == want:
            return self.pipe
        if self.state is not None and self.state[:4] == want[:4] and mode == "unfused":
            self._set_scales(scales)
            self.state = want
            return self.pipe
        self._base(s.model, s.embedding)
        if active:
            self._load_lora(s)
            if mode == "fused":
                for comp, scale in zip(self._lora_components(), self._component_scales(scales)):
                    self.pipe.fuse_lora(components=[comp], lora_scale=scale, adapter_names=[ADAPTER])
                self.pipe.unload_lora_weights()
            else:
                self._set_scales(scales)
        self.state = want
        return self.pipe

    def _load_lora(self, s: ImageSettings) -> None:
        from .formats.loading import load_lora_into

        path, state = Path(s.lora), None
        if _has_bundled_embedding(path):  # a pivotal run's kohya file: its embedding comes from the run
            from safetensors.torch import load_file

            state = {k: v for k, v in load_file(path).items() if not k.startswith("bundle_emb.")}
        try:
            load_lora_into(self.pipe, self.family, s.model, path, ADAPTER, f"--lora {s.lora}", state)
        except UserError:
            self.pipe = None  # a half-loaded adapter may be left behind: start clean next time
            self.state = None
            raise
        if not self._lora_components():
            self.pipe, self.state = None, None
            raise UserError(f"--lora {s.lora}: holds no LoRA weights this model can use")

    def _lora_components(self) -> list[str]:
        return [c for c, names in self.pipe.get_list_adapters().items() if ADAPTER in names]

    def _component_scales(self, scales: tuple[float, float]) -> list[float]:
        by_name = {self.family.denoiser: scales[0], **{name: scales[1] for name in self.family.text_encoders}}
        return [by_name[c] for c in self._lora_components()]

    def _set_scales(self, scales: tuple[float, float]) -> None:
        weights = dict(zip(self._lora_components(), self._component_scales(scales)))
        self.pipe.set_adapters([ADAPTER], adapter_weights=[weights])

    def check(self, settings: list[ImageSettings]) -> None:
        """Load every distinct LoRA and embedding once before anything is generated, so one that does
        not fit the model is refused before a single file is written."""
        seen = set()
        for s in settings:
            if (s.lora or s.embedding) and (s.model, s.lora, s.embedding) not in seen:
                seen.add((s.model, s.lora, s.embedding))
                self.prepare(s)

    def render(self, batch: list[ImageSettings]) -> list[Image.Image]:
        """Images for settings that share everything but prompt, negative prompt and seed."""
        import torch

        assert len({s.batch_key() for s in batch}) == 1, "a batch must share its settings"
        s0 = batch[0]
        pipe = self.prepare(s0)
        pipe.scheduler = self.family.sampler(s0.scheduler, self.base_scheduler, s0.zero_terminal_snr)
        generators = [torch.Generator("cpu").manual_seed(s.seed) for s in batch]
        negative = [s.negative_prompt for s in batch] if any(s.negative_prompt for s in batch) else None
        with torch.no_grad():
            return pipe(
                prompt=[s.prompt for s in batch],
                generator=generators,
                num_inference_steps=s0.steps,
                width=s0.width,
                height=s0.height,
                **self.family.call_kwargs(
                    negative, s0.guidance, s0.zero_terminal_snr, s0.max_sequence_length, pipe=pipe, batch=len(batch)
                ),
            ).images


def _has_bundled_embedding(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return any(k.startswith("bundle_emb.") for k in f.keys())


def image_settings(cfg, engine: Engine, prompt: str, seed: int, **override) -> ImageSettings:
    """One image's settings from a command's config (SamplingConfig fields), with overrides."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    values.update(override)
    model = model_identity(values["model"])
    size = None if values["width"] and values["height"] else engine.native_size(model)
    lora = values["lora"]
    weights = lora_file(lora) if lora else None
    emb = embedding_file(values["embedding"]) if values.get("embedding") else None
    pivot = pivotal_embedding(weights) if weights and emb is None else None
    if pivot is not None:  # pivotal tuning: its embedding comes with it, and sks is said as <sks>
        emb, identifier, token = pivot
        prompt = replace_identifier(prompt, identifier, token)
    return ImageSettings(
        model=model,
        prompt=prompt,
        seed=seed,
        width=values["width"] or size,
        height=values["height"] or size,
        negative_prompt=values["negative_prompt"],
        lora=str(weights.resolve()) if weights else None,
        lora_name=lora_name(lora) if lora else None,
        lora_sha256=sha256(weights) if weights else None,
        lora_scale_unet=float(values["lora_scale_unet"]),
        lora_scale_text_encoder=float(values["lora_scale_text_encoder"]),
        embedding=str(emb.resolve()) if emb else None,
        embedding_sha256=sha256(emb) if emb else None,
        guidance=float(values["guidance"] if values["guidance"] is not None else engine.guidance_for(model)),
        steps=int(values["steps"]),
        scheduler=engine.sampler_for(model, values["scheduler"]),
        zero_terminal_snr=bool(values.get("zero_terminal_snr", False)),
        max_sequence_length=engine.sequence_length_for(model, values.get("max_sequence_length")),
    )


def read_prompts_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--prompts-file {path}: no such file")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts-file {path}: holds no prompt")
    return prompts


def next_number(folder: Path) -> int:
    """Images are numbered like AUTOMATIC1111's (00000-SEED.png); never reuse a number."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"^(\d{5,})-", p.name))]
    return max(numbers, default=-1) + 1


def save_image(image: Image.Image, settings: ImageSettings, path: Path) -> None:
    from .formats.pnginfo import save_png

    d = {**dataclasses.asdict(settings), **a1111_names(settings)}
    with io.atomic_path(path) as tmp:
        save_png(image, tmp, d)
    io.write_text(path.with_suffix(".json"), json.dumps(d, indent=2))


def infotext(s: ImageSettings) -> str:
    """The image's AUTOMATIC1111 "parameters" text (pnginfo.a1111_text), with the names and hashes it needs."""
    from .formats.pnginfo import a1111_text

    return a1111_text({**dataclasses.asdict(s), **a1111_names(s)})


def a1111_names(s: ImageSettings) -> dict:
    """What AUTOMATIC1111's infotext names the model and LoRA by: their names and its short hashes."""
    from .formats.pnginfo import tag_name
    from .weights import a1111_model_hash, model_name

    out = {"model_name": model_name(s.model), "model_hash": a1111_model_hash(s.model)}
    if s.lora:
        out.update(
            lora_tag_name=tag_name(s.lora_name or Path(s.lora).stem), lora_a1111_hash=_lora_hash(s.lora, s.lora_sha256)
        )
    return out


@functools.lru_cache(maxsize=64)
def _lora_hash(path: str, content_sha256: str | None) -> str | None:
    from .formats.a1111 import a1111_lora_hash

    return a1111_lora_hash(Path(path))


def run_generate(cfg: GenerateConfig, progress: bool = True) -> list[Path]:
    """`dreambooth generate`: num_images images per prompt, image i from seed + i."""
    from tqdm.auto import tqdm

    from .models import check_model

    cfg.validate()
    check_model(cfg.model, config=cfg.model_config, allow_pickle=cfg.allow_pickle)
    if cfg.lora:
        lora_file(cfg.lora)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: is a file, not a folder")
    engine = Engine(cfg.dtype, fuse=not cfg.no_fuse)
    todo = [image_settings(cfg, engine, p, cfg.seed + i) for p in cfg.prompt for i in range(cfg.num_images)]
    engine.check(todo)
    out.mkdir(parents=True, exist_ok=True)
    number = next_number(out)
    written = []
    bar = tqdm(total=len(todo), desc="generating", unit="img", disable=not progress)
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start : start + cfg.batch_size]
        for s, image in zip(batch, engine.render(batch)):
            path = out / f"{number:05d}-{s.seed}.png"
            save_image(image, s, path)
            written.append(path)
            number += 1
        bar.update(len(batch))
    bar.close()
    return written
