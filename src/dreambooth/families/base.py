"""What a model family is: everything that differs between Stable Diffusion 1.x, 2.x, SDXL (and the
families to come), answered by one small unit per family (as peft has one module per method), so that
loading, training, generation and the file formats ask the family instead of naming one.

Imports no torch at import time (the CLI's --help imports the registry)."""

from __future__ import annotations

from typing import Any


class Family:
    name = "base"  # the registry's key: sd1, sd2, sdxl
    label = "base"  # in sentences: "Stable Diffusion 1.x"
    pipeline = "StableDiffusionPipeline"  # diffusers' pipeline class for it
    # Its text encoders and tokenizers, by pipeline attribute, in the order prompts are encoded.
    text_encoders: tuple[str, ...] = ("text_encoder",)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    single_file_kinds: tuple[str, ...] = ()  # diffusers' infer_diffusers_model_type names
    kohya_version = "sd_v1"  # kohya's ss_base_model_version
    kohya_text_encoder_prefixes: dict[str, str] = {"text_encoder": "lora_te"}
    # A Textual Inversion file's parts, one per text encoder (AUTOMATIC1111's and ComfyUI's layout);
    # () for a single tensor named by its token.
    embedding_parts: tuple[str, ...] = ()
    upcast_vae = False  # the VAE overflows in fp16: keep it in fp32
    safety_checker = True  # the pipeline has one (loaded as None: this tool makes no content decisions)

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        """Whether a model with these configs (model_index.json, the UNet's and the first text encoder's)
        is of this family."""
        raise NotImplementedError

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        """Whether a diffusers-format LoRA state dict, its keys alone, is for this family."""
        return False

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    def load_kwargs(self) -> dict[str, Any]:
        """What loading its pipeline takes besides the weights' dtype."""
        return {"safety_checker": None, "requires_safety_checker": False} if self.safety_checker else {}

    def kohya_unet_name(self, path: str, unet_config: dict | None) -> str:
        """A UNet module's name in kohya's layout (before dots become underscores): diffusers' own."""
        return path

    def encode_prompt(self, text_encoders: list, ids: list, device) -> tuple[Any, Any]:
        """(hidden states the UNet cross-attends to, pooled embedding or None) of token ids (n, L), one
        tensor per tokenizer: the text encoder's last hidden state."""
        return text_encoders[0](ids[0].to(device))[0], None

    def added_conditions(self, pooled, sizes: list[tuple[int, ...]]) -> dict | None:
        """The UNet's added conditioning of a batch (SDXL's pooled embedding and micro-conditioning)."""
        return None

    def __repr__(self) -> str:
        return self.label
