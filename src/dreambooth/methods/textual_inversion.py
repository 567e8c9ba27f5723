"""Textual Inversion (Gal et al., 2022), the paper's baseline: a new placeholder token whose input
embedding alone is learned; every other weight, and every other row of the embedding matrix, is
unchanged bit for bit. The result is learned_embeds.safetensors, which stock diffusers'
`pipe.load_textual_inversion(path, token=...)` loads. On SDXL the token is learned in both text
encoders and saved as {"clip_l": ..., "clip_g": ...}, the layout AUTOMATIC1111 and ComfyUI use for
SDXL embeddings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..io import atomic_path
from ..models import Components
from ..options import flag_name, option
from .base import Method

if TYPE_CHECKING:
    import torch

EMBEDS_NAME = "learned_embeds.safetensors"
# The prompt templates of the Textual Inversion reference implementation (imagenet_templates_small).
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)


def placeholder_tokens(token: str, n: int) -> list[str]:
    """diffusers' convention for several vectors: <tok>, <tok>_1, <tok>_2, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def learnable_tokens(tokenizer, te, tokens: list[str], init_word: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Add tokens to the tokenizer and rows for them to the text encoder's input embedding, each
    starting as init_word's embedding (the mean of its tokens'); make the embedding trainable. Returns
    (the new ids, a copy of the whole embedding, the mask of rows that must stay as they are)."""
    import torch

    init = tokenizer.encode(init_word, add_special_tokens=False)
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    te.resize_token_embeddings(len(tokenizer))
    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        for i in ids:
            emb[i] = emb[init].mean(0)
    emb.requires_grad_(True)
    keep = torch.ones(emb.shape[0], dtype=torch.bool)
    keep[ids] = False
    return ids, emb.detach().clone(), keep


def restore_rows(te, original: torch.Tensor, keep: torch.Tensor) -> None:
    """Put back every embedding row but the learned ones: weight decay and Adam must not move them."""
    import torch

    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        emb[keep] = original[keep].to(emb.device, emb.dtype)


@dataclasses.dataclass
class TextualInversionOptions:
    token: str | None = option(None, 'textual inversion: the new placeholder token, e.g. "<sks-cat>"')
    initializer_token: str | None = option(
        None, "textual inversion: a one-token word the new embedding starts from, e.g. cat"
    )
    num_vectors: int = option(1, "textual inversion: embedding vectors the placeholder stands for", ge=1)


class TextualInversion(Method):
    name = "textual-inversion"
    label = "Textual Inversion"
    shardable = False  # one embedding: nothing for --fsdp to shard
    setting_label = "textual-inversion"
    options = TextualInversionOptions
    # Gal et al.: lr 5e-4 scaled by the batch, 3000 steps, constant.
    defaults = {"learning_rate": 5e-4, "max_steps": 3000, "warmup": 0}
    # its prompt templates, or the photos' captions where they have them (kohya's and OneTrainer's way)
    uses_captions = True
    text_encoder_choice = False  # it trains the text encoder's input embedding, always
    trained_bytes_estimate = 50_000_000  # the whole embedding matrix is checkpointed

    @classmethod
    def default_learning_rate(cls, cfg) -> float:
        return cls.defaults["learning_rate"] * cfg.batch_size * cfg.gradient_accumulation

    @classmethod
    def validate_options(cls, cfg) -> None:
        if cfg.concepts:
            raise UserError("--concepts: for --method lora or full (Textual Inversion learns one token)")
        for key in ("token", "initializer_token"):
            if not getattr(cfg, key):
                raise UserError(f"--{flag_name(key)}: required with --method textual-inversion")
        if cfg.token.strip() != cfg.token or " " in cfg.token:
            raise UserError(f"--token {cfg.token!r}: must be one word without spaces")

    @classmethod
    def protocol_options(cls, identifier: str, noun: str, subject: str) -> dict:
        """A token of its own per subject (<sks-dog>), starting from the class noun; no prior."""
        token = f"<{identifier}-{subject}>"
        return {"instance_prompt": f"a photo of {token}", "token": token, "initializer_token": noun}

    def usage(self, run: Path, pipeline: str, load: str, trigger: str) -> list[str]:
        return [
            "```python",
            f"from diffusers import {pipeline}",
            f"pipe = {load}",
            f'pipe.load_textual_inversion("{run}", weight_name="learned_embeds.safetensors", token="{trigger}")',
            f'pipe("a photo of a {trigger}").images[0]',
            "```",
            "",
            "AUTOMATIC1111: copy learned_embeds.safetensors to `embeddings/` as `<name>.safetensors`, then write",
            "that name in the prompt. ComfyUI: put it in `models/embeddings/` and write `embedding:<name>`.",
        ]

    def trigger(self) -> str:
        return self.cfg.token

    @property
    def trains_text_encoder(self) -> bool:
        return True  # its input embedding: prompt embeddings cannot be cached

    @classmethod
    def unavailable_for(cls, family) -> str | None:
        if not family.textual_inversion:
            return f"not for {family.label} yet (its T5 encoder cannot learn a token)"
        return None

    def check(self) -> None:
        from transformers import CLIPTokenizer

        from ..models import family_of, quiet_libraries, resolve

        quiet_libraries()
        family = family_of(self.cfg.model)
        if (why := self.unavailable_for(family)) is not None:
            raise UserError(f"--method textual-inversion: {why}")
        for sub in family.tokenizers:
            tok = CLIPTokenizer.from_pretrained(resolve(self.cfg.model), subfolder=sub)
            vocab = tok.get_vocab()
            for t in placeholder_tokens(self.cfg.token, self.cfg.num_vectors):
                if t in vocab or f"{t}</w>" in vocab:
                    raise UserError(
                        f"--token {self.cfg.token}: '{t}' is already in the tokenizer's vocabulary; pick a new word"
                    )
            ids = tok.encode(self.cfg.initializer_token, add_special_tokens=False)
            if len(ids) != 1:
                raise UserError(
                    f"--initializer-token {self.cfg.initializer_token}: is {len(ids)} tokens; it must be exactly one"
                )

    def weights_in(self, folder: Path) -> bool:
        return (Path(folder) / EMBEDS_NAME).is_file()

    def sampling(self, folder: Path) -> dict[str, str]:
        return {"embedding": str(folder)}

    def subject_word(self) -> str | None:
        return self.cfg.token

    def subject_phrase(self, class_noun: str) -> str:
        return f"a {self.cfg.token}"  # as it trained: "a photo of a <token>"

    def caption_terms(self, concept) -> tuple[str | None, str]:
        return self.cfg.token, f"a photo of a {self.cfg.token}"

    def instance_prompts(self) -> list[str]:
        return [t.format(self.cfg.token) for t in TEMPLATES]

    def rewrite_prompt(self, prompt: str) -> str:
        """The token, as a word, spelled out as its vectors' tokens ("<tok> <tok>_1 ...")."""
        word = " ".join(placeholder_tokens(self.cfg.token, self.cfg.num_vectors))
        return re.sub(rf"(?<![\w<>-]){re.escape(self.cfg.token)}(?![\w<>-])", lambda _: word, prompt)

    def prepare(self, comps: Components) -> list[dict]:
        tokens = placeholder_tokens(self.cfg.token, self.cfg.num_vectors)
        for m in (comps.denoiser, comps.vae):
            m.requires_grad_(False)
        self.ids, self.original, self.keep = [], [], []
        groups = []
        import torch

        for tokenizer, te in self._pairs(comps):
            te.to(torch.float32)  # it trains (through its input): fp32 under mixed precision
            te.requires_grad_(False)
            ids, original, keep = learnable_tokens(tokenizer, te, tokens, self.cfg.initializer_token)
            self.ids.append(ids)
            self.original.append(original)
            self.keep.append(keep)
            groups.append({"params": [te.get_input_embeddings().weight], "lr": self.cfg.learning_rate})
        return groups

    def after_step(self, comps: Components) -> None:
        for (_, te), original, keep in zip(self._pairs(comps), self.original, self.keep):
            restore_rows(te, original, keep)

    def learned(self, comps: Components, which: int = 0) -> torch.Tensor:
        te = self._pairs(comps)[which][1]
        return te.get_input_embeddings().weight[self.ids[which]].detach().float().cpu()  # (N, D)

    def save(self, comps: Components, folder: Path) -> list[Path]:
        from safetensors.torch import save_file

        path = Path(folder) / EMBEDS_NAME
        parts = comps.family.embedding_parts or (self.cfg.token,)  # one part per text encoder
        state = {part: self.learned(comps, i).contiguous() for i, part in enumerate(parts)}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"token": self.cfg.token})
        return [path]
