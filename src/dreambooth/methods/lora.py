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
        return self.cfg.train_text_encoder or self.cfg.train_identifier_embedding

    # Pivotal tuning (--train-identifier-embedding): the identifier becomes a new token, learned as
    # Textual Inversion learns one, beside the LoRA.
    @property
    def identifier(self) -> str | None:
        return self.subject_word()

    @property
    def token(self) -> str:
        return f"<{self.identifier}>"

    def weights_in(self, folder: Path) -> bool:
        from ..weights import lora_file

        try:
            lora_file(folder)
        except UserError:
            return False
        return True

    def sampling(self, folder: Path) -> dict[str, str]:
        return {"lora": str(folder)}

    def rewrite_prompt(self, prompt: str) -> str:
        if not self.cfg.train_identifier_embedding:
            return prompt
        return replace_identifier(prompt, self.identifier, self.token)

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
        if self.cfg.train_identifier_embedding and self.identifier is None:
            raise UserError(
                f"--train-identifier-embedding: no identifier found in --instance-prompt "
                f"{self.cfg.instance_prompt!r} (the word before the class noun); give --identifier"
            )

    def _pairs(self, comps: Components) -> list[tuple]:
        pairs = [(comps.tokenizer, comps.text_encoder)]
        if comps.text_encoder_2 is not None:
            pairs.append((comps.tokenizer_2, comps.text_encoder_2))
        return pairs

    def prepare(self, comps: Components) -> list[dict]:
        from diffusers.training_utils import cast_training_params

        for m in (comps.unet, comps.text_encoder, comps.text_encoder_2, comps.vae):
            if m is not None:
                m.requires_grad_(False)
        self.pivots = []  # (ids, original embedding, rows to keep) per text encoder
        if self.cfg.train_identifier_embedding:
            from .textual_inversion import learnable_tokens

            for tokenizer, te in self._pairs(comps):
                self.pivots.append(learnable_tokens(tokenizer, te, [self.token], self.identifier))
        if self.cfg.init_lora:
            self._load_init(comps)
        else:
            try:
                comps.unet.add_adapter(self._config(self.cfg.unet_targets))
            except ValueError as e:
                raise UserError(f"--lora-targets {self.cfg.lora_targets}: {str(e).splitlines()[0]}") from None
        groups = [{"params": _lora_params(comps.unet), "lr": self.cfg.learning_rate}]
        for _, te in self._pairs(comps) if self.pivots else []:
            emb = te.get_input_embeddings().weight
            emb.requires_grad_(True)
            groups.append({"params": [emb], "lr": self.cfg.identifier_lr, "weight_decay": 0.0})
        if self.cfg.train_text_encoder:
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

    def after_step(self, comps: Components) -> None:
        from .textual_inversion import restore_rows

        for (_, te), (_, original, keep) in zip(self._pairs(comps), self.pivots):
            restore_rows(te, original, keep)

    def save(self, comps: Components, folder: Path) -> list[Path]:
        """diffusers' file first (everything else is made from it), then the identifier's embedding and
        the kohya file, each on its own: one that cannot be written does not take the others with it
        (Unsaved lists what was written and what was not)."""
        import dataclasses

        from ..errors import Unsaved
        from ..formats.kohya import write_kohya

        path = Path(folder) / WEIGHTS_NAME
        write_lora_file(
            path, comps.unet, comps.text_encoder, getattr(comps, "text_encoder_2", None), sdxl=comps.is_sdxl
        )
        written, problems = [path], []
        if self.pivots:
            written.append(self._save_embedding(comps, folder))
        if self.cfg.save_format != "diffusers":
            # kohya's file is named after the run: AUTOMATIC1111 and ComfyUI list LoRAs by file name.
            kohya = Path(folder) / f"{Path(self.cfg.output_dir).name}.safetensors"
            try:
                models = {
                    "unet": comps.unet,
                    "text_encoder": comps.text_encoder,
                    "text_encoder_2": comps.text_encoder_2,
                }
                write_kohya(path, kohya, dataclasses.asdict(self.cfg), models)
            except Exception as e:  # any failure: the diffusers file holds the same weights
                problems.append(
                    f"{kohya.name} (kohya's layout): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                )
            else:
                written.insert(1, kohya)
                if self.cfg.save_format == "kohya":
                    path.unlink()
                    written.remove(path)
        if problems:
            raise Unsaved(written, problems)
        return written

    def _save_embedding(self, comps: Components, folder: Path) -> Path:
        """The identifier's learned embedding in Textual Inversion's file (SD: {token: (1, D)}; SDXL:
        clip_l and clip_g), which `load_textual_inversion` and AUTOMATIC1111 load."""
        from safetensors.torch import save_file

        from .textual_inversion import EMBEDS_NAME

        vectors = [
            te.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()
            for (_, te), (ids, _, _) in zip(self._pairs(comps), self.pivots)
        ]
        state = {"clip_l": vectors[0], "clip_g": vectors[1]} if len(vectors) == 2 else {self.token: vectors[0]}
        path = Path(folder) / EMBEDS_NAME
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"token": self.token, "identifier": self.identifier})
        return path


def replace_identifier(prompt: str, identifier: str, token: str) -> str:
    """The prompt with the identifier, as a word, replaced by the pivotal token (pure)."""
    import re

    return re.sub(rf"(?<![\w<>-]){re.escape(identifier)}(?![\w<>-])", token, prompt)


def write_lora_file(path: Path, unet, text_encoder=None, text_encoder_2=None, sdxl: bool = False) -> Path:
    """diffusers' LoRA file (pytorch_lora_weights.safetensors) of the adapters on these models, with
    peft's config of each in its metadata, so stock `load_lora_weights` restores them exactly. A text
    encoder without an adapter is left out."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    def layers(te):
        if te is None or not getattr(te, "peft_config", None):
            return None, None
        # Pivotal tuning resizes the token embeddings; peft would then add the whole matrix, which is no
        # LoRA layer (the new token is saved apart, in learned_embeds.safetensors).
        state = get_peft_model_state_dict(te, save_embedding_layers=False)
        # peft writes DoRA's magnitudes without ".weight"; transformers' adapter loading (which
        # diffusers uses for text encoders) maps only the ".weight" form, and peft reads both.
        state = {f"{k}.weight" if k.endswith("lora_magnitude_vector") else k: v for k, v in state.items()}
        # transformers 5 flattened CLIPTextModel; keep the text_model. prefix that older diffusers,
        # kohya converters and AUTOMATIC1111 expect (new diffusers strips it).
        if not hasattr(te, "text_model"):
            state = {f"text_model.{k}": v for k, v in state.items()}
        return state, te.peft_config["default"].to_dict()

    te1, te1_meta = layers(text_encoder)
    kw = dict(
        unet_lora_layers=get_peft_model_state_dict(unet, save_embedding_layers=False),
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
    from ..formats.kohya import rank_and_alpha, read_lora
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
