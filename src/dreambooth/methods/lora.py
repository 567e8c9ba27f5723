"""LoRA DreamBooth (Hu et al., 2022; Ryu, 2023): low-rank adapters on the UNet (and text encoder),
through peft. The result is diffusers' pytorch_lora_weights.safetensors, with peft's config (rank,
alpha, targets) in its metadata, so stock `load_lora_weights` restores it exactly."""

from __future__ import annotations

from pathlib import Path

from ..config import TEXT_ENCODER_TARGETS
from ..errors import UserError
from ..io import atomic_path
from ..models import Components
from .base import Method

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


class LoRA(Method):
    name = "lora"

    @property
    def trains_text_encoder(self) -> bool:
        return self.cfg.train_text_encoder

    def _config(self, targets):
        from peft import LoraConfig

        cfg = self.cfg
        return LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else cfg.rank,
            lora_dropout=cfg.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=list(targets),
            use_dora=cfg.use_dora,
        )

    def check(self) -> None:
        if self.cfg.init_lora:
            init_shape(self.cfg.init_lora)  # raises when it is no LoRA

    def prepare(self, comps: Components) -> list[dict]:
        from diffusers.training_utils import cast_training_params

        for m in (comps.unet, comps.text_encoder, comps.vae):
            m.requires_grad_(False)
        if self.cfg.init_lora:
            self._load_init(comps)
        else:
            try:
                comps.unet.add_adapter(self._config(self.cfg.unet_targets))
            except ValueError as e:
                raise UserError(f"--lora-targets {self.cfg.lora_targets}: {str(e).splitlines()[0]}") from None
        groups = [{"params": _lora_params(comps.unet), "lr": self.cfg.learning_rate}]
        if self.trains_text_encoder:
            lr_2 = self.cfg.text_encoder_2_lr if self.cfg.text_encoder_2_lr is not None else self.cfg.text_encoder_lr
            for te, lr in ((comps.text_encoder, self.cfg.text_encoder_lr), (comps.text_encoder_2, lr_2)):
                if te is None:
                    continue
                if not getattr(te, "peft_config", None):
                    te.add_adapter(self._config(TEXT_ENCODER_TARGETS))
                groups.append({"params": _lora_params(te), "lr": lr})
        # Trainable adapters stay in fp32 under mixed precision (frozen weights are fp16/bf16).
        cast_training_params([m for m in (comps.unet, comps.text_encoder, comps.text_encoder_2) if m is not None])
        return groups

    def _load_init(self, comps: Components) -> None:
        """The --init-lora file's adapters, as stock diffusers loads them (kohya files converted by
        diffusers' own converter): they set rank, alpha and targets, and train from their values. A
        text-encoder LoRA in the file is kept (and saved) even when the text encoder does not train."""
        from ..weights import lora_file

        path = lora_file(self.cfg.init_lora, "--init-lora")
        try:
            comps.pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="default")
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(
                f"--init-lora {self.cfg.init_lora}: does not fit --model {self.cfg.model} ({str(e).splitlines()[0]})"
            ) from None
        if not getattr(comps.unet, "peft_config", None):
            raise UserError(f"--init-lora {self.cfg.init_lora}: holds no UNet LoRA")

    def save(self, comps: Components, folder: Path) -> list[Path]:
        path = Path(folder) / WEIGHTS_NAME
        write_lora_file(
            path, comps.unet, comps.text_encoder, getattr(comps, "text_encoder_2", None), sdxl=comps.is_sdxl
        )
        if self.cfg.save_format == "diffusers":
            return [path]
        import dataclasses

        from ..export import write_kohya

        # kohya's file is named after the run: AUTOMATIC1111 and ComfyUI list LoRAs by file name.
        kohya = write_kohya(
            path, Path(folder) / f"{Path(self.cfg.output_dir).name}.safetensors", dataclasses.asdict(self.cfg)
        )
        if self.cfg.save_format == "kohya":
            path.unlink()
            return [kohya]
        return [path, kohya]


def write_lora_file(path: Path, unet, text_encoder=None, text_encoder_2=None, sdxl: bool = False) -> Path:
    """diffusers' LoRA file (pytorch_lora_weights.safetensors) of the adapters on these models, with
    peft's config of each in its metadata, so stock `load_lora_weights` restores them exactly. A text
    encoder without an adapter is left out."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    def layers(te):
        if te is None or not getattr(te, "peft_config", None):
            return None, None
        state = get_peft_model_state_dict(te)
        # transformers 5 flattened CLIPTextModel; keep the text_model. prefix that older diffusers,
        # kohya converters and AUTOMATIC1111 expect (new diffusers strips it).
        if not hasattr(te, "text_model"):
            state = {f"text_model.{k}": v for k, v in state.items()}
        return state, te.peft_config["default"].to_dict()

    te1, te1_meta = layers(text_encoder)
    kw = dict(
        unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=te1,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te1_meta,
    )
    if sdxl:
        te2, te2_meta = layers(text_encoder_2)
        kw.update(text_encoder_2_lora_layers=te2, text_encoder_2_lora_adapter_metadata=te2_meta)
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    with atomic_path(path) as tmp:
        cls.save_lora_weights(tmp.parent, weight_name=tmp.name, **kw)
    return path


def init_shape(init_lora: str) -> tuple[int, float]:
    """(rank, alpha) of an --init-lora file's UNet LoRA; UserError when it holds none."""
    from ..export import rank_and_alpha, read_lora
    from ..weights import lora_file

    state, _, adapter = read_lora(lora_file(init_lora, "--init-lora"), "--init-lora")
    shape = rank_and_alpha(state, adapter)
    if shape is None:
        raise UserError(f"--init-lora {init_lora}: holds no UNet LoRA weights")
    return shape


def _lora_params(model) -> list:
    """Make the LoRA matrices of model trainable (stock loading leaves them frozen) and return them."""
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params
