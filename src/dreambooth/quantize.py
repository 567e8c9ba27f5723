"""Quantised frozen base weights (QLoRA-style training, Dettmers et al., 2023): the denoiser and T5,
which do not train, are loaded quantised through diffusers' and transformers' quantisation configs;
LoRA adapters on top train in higher precision. int8 is torchao's weight-only int8 (runs on the CPU
too); fp8 is torchao's weight-only float8 (CUDA, compute capability 8.9+); nf4 is bitsandbytes' 4-bit
NormalFloat (CUDA), as in QLoRA.

What each saves, per weight: int8 1 byte, fp8 1 byte, nf4 about 0.5 byte (plus a scale per block),
against 2 bytes in bf16 (see BENCHMARKS.md for measured figures)."""

from __future__ import annotations

import importlib.util

from .errors import UserError

KINDS = ("int8", "nf4", "fp8")


def check(kind: str | None, flag: str = "--quantize-base") -> None:
    """One line when the kind cannot run here (no CUDA, or its library missing)."""
    if kind is None:
        return
    import torch

    if kind in ("nf4", "fp8") and not torch.cuda.is_available():
        raise UserError(f"{flag} {kind}: needs a CUDA GPU; on this machine use int8")
    library = "bitsandbytes" if kind == "nf4" else "torchao"
    if importlib.util.find_spec(library) is None:
        raise UserError(f"{flag} {kind}: needs {library} (pip install 'dreambooth[quantize]' or {library})")
    if kind == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        raise UserError(f"{flag} fp8: needs a GPU with compute capability 8.9 or newer (Ada, Hopper); use int8 or nf4")


def pipeline_config(kind: str, components: tuple[str, ...], transformers_components: tuple[str, ...]):
    """diffusers' PipelineQuantizationConfig quantising the named components (diffusers models, and
    transformers models such as T5) to kind."""
    from diffusers.quantizers import PipelineQuantizationConfig

    mapping = {name: _config(kind, "diffusers") for name in components}
    mapping |= {name: _config(kind, "transformers") for name in transformers_components}
    return PipelineQuantizationConfig(quant_mapping=mapping)


def _config(kind: str, library: str):
    import torch

    lib = __import__(library)
    if kind == "nf4":
        return lib.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return lib.TorchAoConfig(Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig())
