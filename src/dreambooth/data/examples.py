"""Training examples as the loop consumes them: VAE latents and prompt embeddings.

With caching (the default) the VAE posterior of every image (and of its mirror image when flipping
is on) and the prompt embeddings (while the text encoder is frozen) are computed once; without it
they are computed every step, as the reference scripts do. Both paths draw the same random numbers
in the same order from the step's generator, so they train on the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..families.base import tokenize  # noqa: F401  (where tests and evaluation import it)
from .buckets import batch_of
from .images import load_rgb
from .order import epoch_order
from .pixels import micro_conditioning, resize_and_crop


def to_pixels(
    path: Path, target: int | tuple[int, int], flip: bool, crop_xy: tuple[float, float] = (0.5, 0.5)
) -> torch.Tensor:
    """(3, H, W) in [-1, 1]: the image resized and cropped to the target (a side, or (W, H))."""
    im = resize_and_crop(load_rgb(path), target, crop_xy)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3)
    x = x.permute(2, 0, 1).float() / 127.5 - 1.0
    return x.flip(-1) if flip else x


def sample_latents(
    params: torch.Tensor,
    generator: torch.Generator,
    scaling: float,
    shift: float = 0.0,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Draw z ~ N(mean, exp(logvar)) from the VAE posterior parameters (B, 2C, h, w), then scale
    as the diffusion model expects (Rombach et al., 2022, section 3). rows=(first, total): params are
    rows first.. of a batch of total, and the noise of all total rows is drawn (one process's slice)."""
    mean, logvar = params.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    first, total = rows or (0, mean.shape[0])
    eps = torch.randn((total, *mean.shape[1:]), generator=generator, dtype=mean.dtype)
    eps = eps[first : first + mean.shape[0]].to(mean.device)
    return (mean + std * eps - shift) * scaling


@dataclass
class ExampleSet:
    """One kind of example (the subject's photos or the class images) with its prompt."""

    paths: list[Path]
    prompt_ids: torch.Tensor  # (P, L): one example is paired with one of P prompts
    stream: int
    more_ids: list[torch.Tensor] = field(default_factory=list)  # (P, L') of the family's further tokenizers
    prompt_of: list[int] | None = None  # image index -> its prompt row (captions); else drawn at random
    drawn_prompts: int | None = None  # rows drawn from (the empty prompt of caption dropout is the last row)
    caption_dropout: float = 0.0
    targets: list[tuple[int, int]] | None = None  # each image's (width, height) bucket (--buckets); else square
    unmasked_weight: float | None = None  # --masked-loss: the loss weight outside each photo's mask (None: off)
    _latent_cache: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict)
    _embedding_cache: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (P, L, D), pooled (P, D2)
    _sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # image index -> (width, height)
    _masks: dict[int, object] = field(default_factory=dict)  # image index -> its mask (PIL) or None

    def token_ids(self, which=slice(None)) -> list[torch.Tensor]:
        """The prompts' token ids, one tensor per tokenizer of the family (rows `which`)."""
        return [ids[which] for ids in (self.prompt_ids, *self.more_ids)]

    def mask(self, i: int):
        if i not in self._masks:
            from .masks import load_mask

            self._masks[i] = load_mask(self.paths[i])
        return self._masks[i]

    def size(self, i: int) -> tuple[int, int]:
        if i not in self._sizes:
            self._sizes[i] = load_rgb(self.paths[i]).size
        return self._sizes[i]


class TrainingData:
    """The concepts' example sets: (instance, class or None) per concept (one unless --concepts)."""

    def __init__(
        self,
        concepts: list[tuple[ExampleSet, ExampleSet | None]],
        *,
        resolution: int,
        flip: bool,
        random_crop: bool,
        seed: int,
        family,
    ):
        self.concepts = concepts
        self.resolution, self.flip, self.random_crop, self.seed = resolution, flip, random_crop, seed
        self.family = family  # families.Family: how prompts are encoded and the denoiser conditioned

    @property
    def instance(self) -> ExampleSet:
        return self.concepts[0][0]

    @property
    def klass(self) -> ExampleSet | None:
        return self.concepts[0][1]

    @property
    def sets(self) -> list[ExampleSet]:
        return [s for pair in self.concepts for s in pair if s is not None]

    def sets_of_micro_batch(self, m: int) -> tuple[list[ExampleSet], int]:
        """The sets micro-batch m draws from and which of its turns it is: the concepts take turns, so
        each gets an equal share of the steps whatever its photo count (pure)."""
        c = len(self.concepts)
        instance, klass = self.concepts[m % c]
        return [s for s in (instance, klass) if s is not None], m // c

    @torch.no_grad()
    def cache_latents(self, vae, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        jobs = [
            (s, i, f)
            for s in self.sets
            for i in range(len(s.paths))
            for f in ((False, True) if self.flip else (False,))
        ]
        for s, i, f in tqdm(jobs, desc="caching latents", unit="img", disable=not progress):
            s._latent_cache[(i, f)] = self._encode(vae, [s.paths[i]], [f], [(0.5, 0.5)], [self._target(s, i)])[0].cpu()

    @torch.no_grad()
    def cache_embeddings(self, text_encoders) -> None:
        for s in self.sets:
            emb, pooled = self.family.encode_prompt(text_encoders, s.token_ids(), text_encoders[0].device)
            s._embedding_cache = (emb.cpu(), None if pooled is None else pooled.cpu())

    def _target(self, s: ExampleSet, i: int):
        return s.targets[i] if s.targets is not None else self.resolution

    def _encode(self, vae, paths, flips, crops, targets=None) -> torch.Tensor:
        targets = targets or [self.resolution] * len(paths)
        pixels = torch.stack([to_pixels(p, t, f, c) for p, t, f, c in zip(paths, targets, flips, crops)])
        pixels = pixels.to(vae.device, vae.dtype)  # (B, 3, R, R)
        return vae.encode(pixels).latent_dist.parameters  # (B, 8, R/8, R/8)

    def batch(
        self,
        s: ExampleSet,
        first_k: int,
        n: int,
        generator: torch.Generator,
        vae,
        text_encoders,
        device,
        part: tuple[int, int] | None = None,
    ):
        """Latents (n, C, h, w), text embeddings (n, L, D) and the denoiser's further conditioning where
        the family has one (family.conditions; else None) of examples first_k .. first_k + n - 1;
        with part=(lo, hi) only those of examples first_k + lo .. first_k + hi - 1, drawing the same random
        numbers as for all n (how processes split a global batch)."""
        lo, hi = part or (0, n)
        if s.targets is not None:  # a batch from one bucket: all of one size
            idx = batch_of(s.targets, n, self.seed, s.stream, first_k // n)
        else:
            idx = [epoch_order(len(s.paths), self.seed, s.stream, first_k + j) for j in range(n)]
        flips = [bool(torch.rand((), generator=generator) < 0.5) if self.flip else False for _ in idx]
        crops = [tuple(torch.rand(2, generator=generator).tolist()) if self.random_crop else (0.5, 0.5) for _ in idx]
        n_prompts = s.drawn_prompts or s.prompt_ids.shape[0]
        if s.prompt_of is not None:
            which = torch.tensor([s.prompt_of[i] for i in idx], dtype=torch.long)
        elif n_prompts > 1:
            which = torch.randint(0, n_prompts, (n,), generator=generator)
        else:
            which = torch.zeros(n, dtype=torch.long)
        idx, flips, crops, which = idx[lo:hi], flips[lo:hi], crops[lo:hi], which[lo:hi]
        latents = self._latents(s, idx, flips, crops, vae, generator, rows=(lo, n))
        if s.caption_dropout > 0:  # drawn last: without dropout a step's random numbers are unchanged
            dropped = (torch.rand(n, generator=generator) < s.caption_dropout)[lo:hi]
            which = torch.where(dropped, s.prompt_ids.shape[0] - 1, which)
        emb, added = self._text(s, idx, flips, crops, which, text_encoders, device)
        return latents.to(device), emb.to(device), added, self._weights(s, idx, flips, crops, latents, device)

    def _weights(self, s: ExampleSet, idx, flips, crops, latents, device):
        """--masked-loss: each example's loss weights on the latent grid (n, 1, h, w), or None."""
        if s.unmasked_weight is None:
            return None
        from .masks import latent_weights

        grid, out = tuple(latents.shape[-2:]), []
        for i, f, c in zip(idx, flips, crops):
            mask = s.mask(i)
            out.append(torch.ones(1, *grid) if mask is None else latent_weights(mask, self._target(s, i), f, c, grid,
                                                                                s.unmasked_weight))  # fmt: skip
        return torch.stack(out).to(device)

    def fixed(self, s: ExampleSet, i: int, generator: torch.Generator, vae, text_encoders, device):
        """Example i of s as the validation loss sees it: unflipped, centred, with its own prompt (its
        caption, or the first prompt), its latents sampled from generator; as batch returns them."""
        which = torch.tensor([s.prompt_of[i] if s.prompt_of is not None else 0], dtype=torch.long)
        latents = self._latents(s, [i], [False], [(0.5, 0.5)], vae, generator, rows=(0, 1))
        emb, added = self._text(s, [i], [False], [(0.5, 0.5)], which, text_encoders, device)
        return latents.to(device), emb.to(device), added

    def _latents(self, s: ExampleSet, idx, flips, crops, vae, generator, rows):
        if s._latent_cache:
            params = torch.stack([s._latent_cache[(i, f)] for i, f in zip(idx, flips)])
        else:
            with torch.no_grad():
                params = self._encode(vae, [s.paths[i] for i in idx], flips, crops, [self._target(s, i) for i in idx])
        cfg = vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return sample_latents(params, generator, cfg.scaling_factor, shift, rows=rows)

    def _text(self, s: ExampleSet, idx, flips, crops, which, text_encoders, device):
        """The prompts' embeddings (cached or encoded) and the family's further conditioning, or None."""
        if s._embedding_cache is not None:
            emb, pooled = s._embedding_cache
            emb, pooled = emb[which], None if pooled is None else pooled[which]
        else:
            emb, pooled = self.family.encode_prompt(text_encoders, s.token_ids(which), device)
        added = None
        if pooled is not None:
            sizes = None
            if self.family.size_conditioning:
                sizes = [micro_conditioning(s.size(i), self._target(s, i), c, f) for i, c, f in zip(idx, crops, flips)]
            added = {k: v.to(device) for k, v in self.family.conditions(pooled, sizes).items()}
        return emb, added
