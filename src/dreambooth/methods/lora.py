"""LoRA DreamBooth (Hu et al., 2022; Ryu, 2023): low-rank adapters on the UNet (and text encoder),
through peft. The result is diffusers' pytorch_lora_weights.safetensors, with peft's config (rank,
alpha, targets) in its metadata, so stock `load_lora_weights` restores it exactly; with --save-format
kohya|both also kohya's layout (formats.kohya), which AUTOMATIC1111 and ComfyUI load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError
from ..families.base import CLIP_TARGETS, UNET_TARGET_GROUPS
from ..formats.kohya import DORA_FOR
from ..io import atomic_path
from ..models import Components
from ..options import option
from ..weights import replace_identifier
from .adapters import ADAPTERS, TRAINED_MARKERS
from .base import Method

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
TEXT_ENCODER_TARGETS = CLIP_TARGETS


@dataclasses.dataclass
class LoRAOptions:
    rank: int = option(16, "LoRA rank", ge=1)
    lora_alpha: float | None = option(None, "LoRA alpha (default: the rank, i.e. scale 1)", gt=0)
    lora_targets: str = option(
        "attn",
        "comma-separated modules of the UNet or transformer for LoRA: the family's groups (UNets: "
        + ", ".join(UNET_TARGET_GROUPS)
        + "; SD3 and FLUX: attn, ff) or module-name suffixes",
    )
    lora_dropout: float = option(0.0, "dropout on the LoRA path", ge=0, lt=1)
    use_dora: bool = option(
        False,
        "DoRA (Liu et al., 2024): LoRA on the direction of each weight plus a trained magnitude per output; "
        "closer to full fine-tuning at the same rank, ~10-20 %% slower per step",
    )
    init_lora: str | None = option(
        None,
        "start from a trained LoRA (diffusers or kohya/AUTOMATIC1111 .safetensors, a run or checkpoint folder); "
        "its rank, alpha and targets replace --rank, --lora-alpha and --lora-targets",
    )
    train_identifier_embedding: bool = option(
        False,
        "pivotal tuning (lora): also learn the identifier's input embedding, as a new token <sks> that starts "
        "as sks and that prompts' sks becomes; saved as learned_embeds.safetensors and bundled in the kohya file",
    )
    identifier_lr: float = option(
        5e-4, "learning rate of the identifier's embedding (--train-identifier-embedding)", gt=0, le=1
    )
    adapter: str = option(
        "lora",
        "the adapter: lora; loha (LyCORIS's Hadamard product of two low-rank pairs: rank r reaches r^2) or lokr "
        "(a Kronecker product: tiny files), through peft, saved in LyCORIS's layout (ComfyUI, AUTOMATIC1111)",
        choices=tuple(ADAPTERS),
    )
    save_format: str = option(
        "diffusers",
        "LoRA file layout: diffusers (pytorch_lora_weights.safetensors), kohya (RUN-NAME.safetensors, for "
        "AUTOMATIC1111/ComfyUI/sd-scripts) or both",
        choices=("diffusers", "kohya", "both"),
    )
    dora_for: str = option(
        "comfyui",
        "with --use-dora and a kohya file: write its dora_scale for the program that loads it, which then merges "
        "it as peft does (comfyui: also Forge; lycoris); AUTOMATIC1111 cannot merge peft's DoRA right (refused)",
        choices=DORA_FOR,
    )

    def denoiser_targets(self, groups: dict[str, tuple[str, ...]]) -> list[str]:
        """--lora-targets as module-name suffixes, with the family's groups (family.lora_target_groups)."""
        out: list[str] = []
        for name in (t.strip() for t in self.lora_targets.split(",")):
            for target in groups.get(name, (name,)):
                if target and target not in out:
                    out.append(target)
        return out


class LoRA(Method):
    name = "lora"
    label = setting_label = "LoRA"
    options = LoRAOptions
    lora_scaled = True
    defaults = {"learning_rate": 1e-4, "max_steps": 2000, "warmup": 500}  # diffusers' LoRA DreamBooth example
    # a rank-128 LoRA on SDXL with both text encoders is ~0.9 GB; rank 16 on SD 1.5 ~25 MB
    trained_bytes_estimate = 200_000_000

    @classmethod
    def resolve(cls, cfg):
        """An --init-lora file's rank and alpha decide its adapters'; alpha defaults to the rank."""
        if cfg.init_lora:
            rank, alpha = init_shape(cfg.init_lora)
            cfg = dataclasses.replace(cfg, rank=rank, lora_alpha=alpha)
        return dataclasses.replace(cfg, lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else float(cfg.rank))

    @classmethod
    def validate_options(cls, cfg) -> None:
        from ..formats.kohya import A1111_DORA

        checks = [
            (bool(cfg.denoiser_targets({})), "--lora-targets", "names no module"),
            (
                not (cfg.use_dora and cfg.save_format != "diffusers" and cfg.dora_for == "automatic1111"),
                "--dora-for",
                "automatic1111: " + A1111_DORA,
            ),
            (
                ADAPTERS[cfg.adapter].lora_only_options or not (cfg.use_dora or cfg.init_lora),
                "--adapter",
                f"{cfg.adapter}: DoRA and --init-lora are LoRA's; leave them out",
            ),
            (
                not ADAPTERS[cfg.adapter].lycoris or cfg.save_format == "diffusers",
                "--save-format",
                f"{cfg.save_format}: {cfg.adapter} is written in LyCORIS's layout (kohya's names) already",
            ),
            (
                not (cfg.use_dora and cfg.save_format == "kohya"),
                "--save-format",
                "kohya alone cannot hold a DoRA run that diffusers (and this tool) loads; use both",
            ),
            (
                not (cfg.train_identifier_embedding and cfg.concepts),
                "--train-identifier-embedding",
                "for --method lora with one concept (Textual Inversion learns a token by itself)",
            ),
        ]
        for ok, flag, problem in checks:
            if not ok:
                raise UserError(f"{flag}: {problem}")

    def card_lines(self) -> list[str]:
        cfg = self.cfg
        return [
            f"- LoRA rank {cfg.rank}, alpha {cfg.lora_alpha}, on {cfg.lora_targets}"
            + (f"; text encoder too (lr {cfg.text_encoder_lr})" if cfg.train_text_encoder else "")
        ]

    def usage(self, run: Path, pipeline: str, load: str, trigger: str) -> list[str]:
        cfg = self.cfg
        dora = []
        if cfg.use_dora:
            dora = [
                "",
                f"DoRA: the kohya file is written for {cfg.dora_for} (`--dora-for`; comfyui also serves Forge, "
                "lycoris LyCORIS), where it merges as peft does; AUTOMATIC1111 merges DoRA per input channel and "
                "cannot load this run right.",
            ]
        return [
            "```python",
            f"from diffusers import {pipeline}",
            f"pipe = {load}",
            f'pipe.load_lora_weights("{run}")  # pytorch_lora_weights.safetensors',
            f'pipe("{trigger}", guidance_scale=5).images[0]',
            "```",
            "",
            f'or `dreambooth generate --model {cfg.model} --lora {run} --prompt "{trigger}"`'
            + (f" --model-config {cfg.model_config}" if cfg.model_config else "")
            + ".",
            "",
            f"AUTOMATIC1111 and ComfyUI: `dreambooth export --lora {run} {run.name}.safetensors` writes kohya's layout;",
            "put it in `models/Lora/` and write `<lora:" + run.name + ":1>` in the prompt (AUTOMATIC1111) or load it",
            "with a LoraLoader node (ComfyUI).",
            *dora,
        ]

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
        cfg = self.cfg
        alpha = cfg.lora_alpha if cfg.lora_alpha is not None else cfg.rank
        return ADAPTERS[cfg.adapter].config(cfg.rank, alpha, cfg.lora_dropout, list(targets), cfg.use_dora)

    def check(self) -> None:
        if ADAPTERS[self.cfg.adapter].lycoris:
            from ..models import family_of

            family = family_of(self.cfg.model)
            if family.kohya_fused:
                raise UserError(f"--adapter {self.cfg.adapter}: LyCORIS's layout has no form for {family.label}'s "
                                "fused layers; use lora")  # fmt: skip
        if self.cfg.init_lora:
            init_shape(self.cfg.init_lora)  # raises when it is no LoRA
        if self.cfg.train_identifier_embedding and self.identifier is None:
            raise UserError(
                f"--train-identifier-embedding: no identifier found in --instance-prompt "
                f"{self.cfg.instance_prompt!r} (the word before the class noun); give --identifier"
            )

    def prepare(self, comps: Components) -> list[dict]:
        from diffusers.training_utils import cast_training_params

        for m in (comps.denoiser, comps.vae, *comps.text_encoders):
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
                comps.denoiser.add_adapter(self._config(self.cfg.denoiser_targets(comps.family.lora_target_groups)))
            except ValueError as e:
                raise UserError(f"--lora-targets {self.cfg.lora_targets}: {str(e).splitlines()[0]}") from None
        groups = [{"params": _lora_params(comps.denoiser), "lr": self.cfg.learning_rate}]
        embeddings = [te.get_input_embeddings().weight for _, te in self._pairs(comps)] if self.pivots else []
        groups += [{"params": [emb], "lr": self.cfg.identifier_lr, "weight_decay": 0.0} for emb in embeddings]
        if self.cfg.train_text_encoder:
            for (_, te), lr in zip(self._pairs(comps), self.text_encoder_lrs(comps)):
                if not getattr(te, "peft_config", None):
                    te.add_adapter(self._config(comps.family.text_encoder_lora_targets))
                groups.append({"params": _lora_params(te), "lr": lr})
        for emb in embeddings:  # after add_adapter, which freezes every parameter that is not the adapter's
            emb.requires_grad_(True)
        # Trainable adapters stay in fp32 under mixed precision (frozen weights are fp16/bf16).
        cast_training_params([comps.denoiser, *comps.text_encoders])
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
        if not getattr(comps.denoiser, "peft_config", None):
            raise UserError(f"--init-lora {self.cfg.init_lora}: holds no UNet LoRA")

    def after_step(self, comps: Components) -> None:
        from .textual_inversion import restore_rows

        for (_, te), (_, original, keep) in zip(self._pairs(comps), self.pivots):
            restore_rows(te, original, keep)

    def save(self, comps: Components, folder: Path) -> list[Path]:
        """diffusers' file first (everything else is made from it), then the identifier's embedding and
        the kohya file, each on its own: one that cannot be written does not take the others with it
        (Unsaved lists what was written and what was not)."""
        from ..errors import Unsaved
        from ..formats.kohya import write_kohya
        from ..formats.lora import write_lora_file

        path = Path(folder) / WEIGHTS_NAME
        encoders = {n: te for n, _, te in comps.trainable_encoders()}
        if ADAPTERS[self.cfg.adapter].lycoris:
            from ..formats.lycoris import write_lycoris_file

            write_lycoris_file(path, comps.family, comps.denoiser, encoders, self.cfg)
            return [path, *([self._save_embedding(comps, folder)] if self.pivots else [])]
        write_lora_file(path, comps.family, comps.denoiser, encoders)
        written, problems = [path], []
        if self.pivots:
            written.append(self._save_embedding(comps, folder))
        if self.cfg.save_format != "diffusers":
            # kohya's file is named after the run: AUTOMATIC1111 and ComfyUI list LoRAs by file name.
            kohya = Path(folder) / f"{Path(self.cfg.output_dir).name}.safetensors"
            try:
                models = {"unet": comps.denoiser, **{n: te for n, _, te in comps.trainable_encoders()}}
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
        """The identifier's learned embedding in Textual Inversion's file ({token: (1, D)}, or one part per
        text encoder as the family names them), which `load_textual_inversion` and AUTOMATIC1111 load."""
        from safetensors.torch import save_file

        from .textual_inversion import EMBEDS_NAME

        vectors = [
            te.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()
            for (_, te), (ids, _, _) in zip(self._pairs(comps), self.pivots)
        ]
        state = dict(zip(comps.family.embedding_parts or (self.token,), vectors))
        path = Path(folder) / EMBEDS_NAME
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"token": self.token, "identifier": self.identifier})
        return path


def init_shape(init_lora: str) -> tuple[int, float]:
    """(rank, alpha) of an --init-lora file's UNet LoRA; UserError when it holds none."""
    from ..formats.lora import rank_and_alpha, read_lora
    from ..weights import lora_file

    state, _, adapter = read_lora(lora_file(init_lora, "--init-lora"), "--init-lora")
    shape = rank_and_alpha(state, adapter)
    if shape is None:
        raise UserError(f"--init-lora {init_lora}: holds no UNet LoRA weights")
    return shape


def _lora_params(model) -> list:
    """Make the LoRA matrices of model trainable (stock loading leaves them frozen) and return them."""
    params = [p for name, p in model.named_parameters() if any(k in name for k in TRAINED_MARKERS)]
    for p in params:
        p.requires_grad_(True)
    return params
