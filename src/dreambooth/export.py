"""`dreambooth export`: a trained LoRA in kohya's layout (which kohya's sd-scripts, AUTOMATIC1111, ComfyUI
and LyCORIS load; formats.kohya) or back in diffusers', or a whole model as one single-file checkpoint."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .formats.kohya import DORA_FOR, kohya_tensors, run_config
from .formats.lora import is_kohya, read_lora

FORMATS = ("kohya", "diffusers", "single-file")


def run_export(cfg) -> Path:
    """`dreambooth export` (config.ExportConfig): write the LoRA of a run, checkpoint or file to cfg.out in
    kohya's or diffusers' layout, or with --format single-file a whole model (a diffusers folder, e.g. a
    full fine-tune's run) as one original-layout checkpoint; returns the written path."""
    return export(cfg.lora, cfg.out, cfg.format, cfg.overwrite, cfg.model, cfg.dtype, cfg.dora_for)


def export(
    lora: str | None,
    out: str,
    fmt: str = "kohya",
    overwrite: bool = False,
    model: str | None = None,
    dtype: str = "fp16",
    dora_for: str = "comfyui",
) -> Path:
    """What run_export does, from plain values."""
    from safetensors.torch import save_file

    from .io import atomic_path
    from .weights import lora_file

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if dora_for not in DORA_FOR:
        raise UserError(f"--dora-for {dora_for}: one of {', '.join(DORA_FOR)}")
    if fmt == "single-file" and (model is None or lora is not None):
        raise UserError("--format single-file: exports --model (a whole model), not --lora")
    if fmt != "single-file" and lora is None:
        raise UserError("--lora: required with --format " + fmt)
    dest = Path(out).expanduser()
    if dest.suffix != ".safetensors":
        raise UserError(f"{out}: the exported file must end in .safetensors")
    if dest.exists() and not overwrite:
        raise UserError(f"{out}: exists (add --overwrite to replace it)")
    if not dest.parent.is_dir():
        raise UserError(f"{out}: no such folder {dest.parent}")
    if fmt == "single-file":
        return _export_single_file(model, dest, dtype)
    src = lora_file(lora)
    if dest.resolve() == src.resolve():
        raise UserError(f"{out}: is the LoRA being exported")
    state, meta, adapter = read_lora(src)
    if is_kohya(state) and fmt == "kohya":
        raise UserError(f"--lora {lora}: is already in kohya's layout")
    run = run_config(src)
    if model is not None:  # the base model, for a LoRA file without its run (SDXL's block names need it)
        from .models import check_model

        check_model(model)
        run = {**(run or {}), "model": model}
    if is_kohya(state):  # to diffusers' layout
        if not (run and run.get("model")):
            raise UserError(f"--lora {lora}: a kohya file converts against its base model; give --model")
        return _kohya_to_diffusers(src, run["model"], dest)
    if fmt == "kohya":
        tensors, metadata = kohya_tensors(src, run, dest.stem, flag=f"--lora {lora}", dora_for=dora_for)
    else:
        tensors, metadata = state, meta
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    return dest


def _kohya_to_diffusers(src: Path, model: str, dest: Path) -> Path:
    """A kohya file in diffusers' layout, written from what stock `load_lora_weights` makes of it (its
    converter, its alphas as peft's lora_alpha / alpha_pattern), so loading the result builds the
    same adapters."""
    from .formats.loading import load_lora_into
    from .formats.lora import write_lora_file
    from .models import family_of, load_pipeline

    pipe = load_pipeline(model)
    family = family_of(model)
    load_lora_into(pipe, family, model, src, "default", f"--lora {src}")
    encoders = {name: getattr(pipe, name) for name in family.trainable_text_encoders}
    return write_lora_file(dest, family, getattr(pipe, family.denoiser), encoders)


def _export_single_file(model: str, dest: Path, dtype: str) -> Path:
    import torch
    from safetensors.torch import save_file

    from .formats.singlefile import single_file_state
    from .io import atomic_path
    from .models import check_model, load_pipeline

    if Path(model).expanduser().is_file():
        raise UserError(f"--model {model}: is a single file already")
    check_model(model)
    pipe = load_pipeline(model)
    try:
        state = single_file_state(pipe, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[dtype])
    except ValueError as e:
        raise UserError(f"--model {model}: {e}") from None
    del pipe
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return dest
