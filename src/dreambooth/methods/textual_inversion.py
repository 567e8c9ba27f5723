"""Textual Inversion (Gal et al., 2022), the paper's baseline: a new placeholder token whose input
embedding alone is learned; every other weight, and every other row of the embedding matrix, is
unchanged bit for bit. The result is learned_embeds.safetensors, which stock diffusers'
`pipe.load_textual_inversion(path, token=...)` loads."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..io import atomic_path
from ..models import Components
from .base import Method

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


class TextualInversion(Method):
    name = "textual-inversion"

    @property
    def trains_text_encoder(self) -> bool:
        return True  # its input embedding: prompt embeddings cannot be cached

    def check(self) -> None:
        from transformers import CLIPTokenizer

        from ..models import quiet_libraries, resolve

        quiet_libraries()
        tok = CLIPTokenizer.from_pretrained(resolve(self.cfg.model), subfolder="tokenizer")
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

    def instance_prompts(self) -> list[str]:
        word = " ".join(placeholder_tokens(self.cfg.token, self.cfg.num_vectors))
        return [t.format(word) for t in TEMPLATES]

    def prepare(self, comps: Components) -> list[dict]:
        tokens = placeholder_tokens(self.cfg.token, self.cfg.num_vectors)
        comps.tokenizer.add_tokens(tokens)
        init_id = comps.tokenizer.encode(self.cfg.initializer_token, add_special_tokens=False)[0]
        self.ids = comps.tokenizer.convert_tokens_to_ids(tokens)
        comps.text_encoder.resize_token_embeddings(len(comps.tokenizer))
        comps.text_encoder.to(torch.float32)  # it trains (through its input): fp32 under mixed precision
        for m in (comps.unet, comps.vae, comps.text_encoder):
            m.requires_grad_(False)
        emb = comps.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            for i in self.ids:
                emb[i] = emb[init_id]
        emb.requires_grad_(True)
        self.original = emb.detach().clone()
        self.keep = torch.ones(emb.shape[0], dtype=torch.bool)
        self.keep[self.ids] = False
        return [{"params": [emb], "lr": self.cfg.learning_rate}]

    def after_step(self, comps: Components) -> None:
        """Put back every row but the new ones: weight decay and Adam must not move them."""
        emb = comps.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            emb[self.keep] = self.original[self.keep].to(emb.device)

    def learned(self, comps: Components) -> torch.Tensor:
        return comps.text_encoder.get_input_embeddings().weight[self.ids].detach().float().cpu()  # (N, D)

    def save(self, comps: Components, folder: Path) -> list[Path]:
        from safetensors.torch import save_file

        path = Path(folder) / EMBEDS_NAME
        with atomic_path(path) as tmp:
            save_file({self.cfg.token: self.learned(comps).contiguous()}, str(tmp))
        return [path]
