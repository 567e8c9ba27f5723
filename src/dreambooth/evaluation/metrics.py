"""The DreamBooth paper's metrics (Ruiz et al., 2023, section 4.1 and Table 3) as pure functions of
embeddings; the feature extractors that make the embeddings live in extractors.py."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs (a_i, b_j): a (N, D), b (M, D)."""
    a, b = F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1)
    return float((a @ b.T).mean())


def dino_score(generated: torch.Tensor, real: torch.Tensor) -> float:
    """DINO: mean pairwise cosine of DINO ViT-S/16 CLS embeddings, generated vs real (section 4.1)."""
    return mean_pairwise_cosine(generated, real)


def clip_i_score(generated: torch.Tensor, real: torch.Tensor) -> float:
    """CLIP-I: mean pairwise cosine of CLIP image embeddings, generated vs real (section 4.1)."""
    return mean_pairwise_cosine(generated, real)


def clip_t_scores(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """CLIP-T per image: cosine of each image's CLIP embedding with its prompt's (row i with row i).

    Unlike CLIPScore (Hessel et al., 2021) it is neither scaled by 100 nor clamped at 0."""
    return (F.normalize(images.double(), dim=-1) * F.normalize(texts.double(), dim=-1)).sum(-1)


def pres_score(class_images: torch.Tensor, real: torch.Tensor) -> float:
    """PRES (lower is better): mean pairwise DINO cosine of images generated for the class prompt
    (no identifier) with the real subject images (section 4.3, Table 3)."""
    return mean_pairwise_cosine(class_images, real)


def div_score(distances: list[torch.Tensor]) -> float:
    """DIV (higher is better): mean LPIPS distance over the pairs of images generated for the same
    prompt; one (n, n) distance matrix per prompt, only its upper triangle i < j is used."""
    pairs = [d[torch.triu_indices(d.shape[0], d.shape[0], offset=1).unbind()] for d in distances if d.shape[0] > 1]
    if not pairs:
        raise ValueError("DIV needs at least two images of one prompt")
    return float(torch.cat(pairs).double().mean())


def strip_identifier(prompt: str, identifier: str) -> str:
    """'a photo of sks dog in the jungle' -> 'a photo of dog in the jungle': CLIP cannot know the
    identifier, so prompts are scored without it."""
    return re.sub(r"\s+", " ", re.sub(rf"(?<!\w){re.escape(identifier)}(?!\w)", "", prompt)).strip()
