"""Model families, registered by name: adding one is a module here and one entry below. Which family a
model is comes from its configs only (model_index.json, the UNet's and the text encoder's), so nothing
is loaded to find out, and a model of a family not supported is refused in one line before any weight is
(models.family_of)."""

from __future__ import annotations

from functools import lru_cache

from ..errors import UserError
from .base import Family
from .flux import Flux
from .sd1 import SD1
from .sd2 import SD2
from .sd3 import SD3
from .sdxl import SDXL

# The first that recognises a model (or a LoRA file's keys) wins.
FAMILIES: dict[str, Family] = {f.name: f() for f in (Flux, SD3, SDXL, SD2, SD1)}


@lru_cache(maxsize=64)
def recognise(source: str, model: str, flag: str = "--model") -> Family:
    """The family of the model whose configs are at source (a folder or hub id; models.family_of
    resolves a model's name to it)."""
    from diffusers import DiffusionPipeline

    try:
        index = dict(DiffusionPipeline.load_config(source))
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {model}: could not read its configs ({str(e).splitlines()[0]})") from None
    unet, text_encoder = _component_config(source, "unet"), _component_config(source, "text_encoder")
    for family in FAMILIES.values():
        if family.recognises(index, unet, text_encoder):
            return family
    supported = ", ".join(f"{f.label} ({f.pipeline})" for f in FAMILIES.values())
    raise UserError(
        f"{flag} {model}: a {index.get('_class_name', 'model of an unknown kind')}, which this tool does not "
        f"train; supported: {supported}"
    )


def _component_config(source: str, subfolder: str) -> dict:
    """A component's config.json (empty when the model has no such component)."""
    from diffusers.configuration_utils import ConfigMixin

    class _Any(ConfigMixin):
        config_name = "config.json"

    try:
        return dict(_Any.load_config(source, subfolder=subfolder))
    except (OSError, ValueError):
        return {}


def family_of_pipeline(pipe) -> Family:
    """The family of a loaded pipeline, by its class (SD 1.x and 2.x share theirs, and every question a
    loaded pipeline asks is answered the same by both)."""
    name = type(pipe).__name__
    found = next((f for f in FAMILIES.values() if f.pipeline == name), None)
    if found is None:
        raise UserError(f"a {name}, which this tool does not train")
    return found


def denoiser_names() -> tuple[str, ...]:
    """The families' denoisers' pipeline attributes (a diffusers LoRA file's key prefixes): unet, transformer."""
    return tuple(dict.fromkeys(f.denoiser for f in FAMILIES.values()))


def family_of_lora(state: dict) -> Family:
    """The family a diffusers-format LoRA state dict is for, from its keys alone (no base model given)."""
    return next((f for f in FAMILIES.values() if f.recognises_lora(state)), FAMILIES["sd1"])


def family_by_kind(kind: str) -> Family | None:
    """The family of a single-file checkpoint diffusers reads as `kind` (v1, v2, xl_base), if supported."""
    return next((f for f in FAMILIES.values() if kind in f.single_file_kinds), None)
