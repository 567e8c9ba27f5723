"""Loading a LoRA file of any layout we read (diffusers', kohya's, LyCORIS's LoHa/LoKr) into a pipeline:
the one place that dispatches on the layout, so the layouts' modules need not know of each other."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .lora import is_kohya, read_lora
from .lycoris import from_lycoris, is_lycoris


def load_lora_into(pipe, family, model: str, path: Path, adapter: str, flag: str = "--lora", state=None) -> None:
    """Load a LoRA file (either layout) into the pipeline as adapter, as stock `load_lora_weights` does,
    except kohya files of a family that reads them itself (family.kohya_state_to_diffusers); state: the
    file's tensors, already read (and filtered) by the caller. One line when it does not fit the model."""
    from ..models import denoiser_config

    if is_lycoris(_keys(path, flag) if state is None else state):
        from peft import set_peft_model_state_dict

        tensors = read_lora(path, flag)[0] if state is None else state
        models = {family.denoiser: getattr(pipe, family.denoiser)}
        models |= {n: getattr(pipe, n) for n in family.trainable_text_encoders if getattr(pipe, n, None) is not None}
        try:
            for component, (config, peft_state) in from_lycoris(
                tensors, family, models, denoiser_config(model)
            ).items():
                models[component].add_adapter(config, adapter_name=adapter)
                set_peft_model_state_dict(models[component], peft_state, adapter_name=adapter)
        except UserError as e:
            raise UserError(f"{flag}: does not fit the model {model} ({e})") from None
        return
    try:
        if state is None and is_kohya(dict.fromkeys(_keys(path, flag))):
            state = read_lora(path, flag)[0]
        if state is not None and is_kohya(state):
            converted = family.kohya_state_to_diffusers(state, denoiser_config(model) or {})
            state = converted if converted is not None else state
        if state is not None:
            pipe.load_lora_weights(state, adapter_name=adapter)
        else:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
    except (ValueError, RuntimeError, KeyError, OSError) as e:
        raise UserError(f"{flag}: does not fit the model {model} ({str(e).splitlines()[0][:200]})") from None


def _keys(path: Path, flag: str) -> list[str]:
    """A .safetensors file's tensor names, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types; any means unreadable
        raise UserError(f"{flag} {path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
