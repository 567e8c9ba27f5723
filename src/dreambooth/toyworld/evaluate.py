"""How well a toy-world model follows prompts, read by the oracle: `python -m dreambooth.toyworld.evaluate MODEL`.

For the 100 evaluation captions (50 of (shape, colour, background) triples held out of training),
one image each: the share where the oracle finds the requested background, object colour and shape,
each and all three, overall and for seen vs held-out triples. Also the oracle on the VAE's own
reconstructions, the ceiling any model on that VAE has.
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from .oracle import read_scene
from .train import eval_captions, to_tensor
from .world import render, sample_scene

KEYS = ("background", "color", "shape")


def prompt_following(pipe, steps: int = 30, guidance: float = 5.0, seed: int = 0) -> dict:
    from ..generation import make_scheduler

    pipe.scheduler = make_scheduler("dpm++2m-karras", pipe.scheduler.config)
    rows = []
    for i, (text, (shape, color, background), held) in enumerate(eval_captions()):
        g = torch.Generator().manual_seed(seed + i)
        image = pipe(text, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=64, width=64).images[
            0
        ]
        read = read_scene(image)
        want = {"shape": shape, "color": color, "background": background}
        rows.append(({k: read[k] == want[k] for k in KEYS}, held))
    out = {}
    for name, sel in (("all", rows), ("seen", [r for r in rows if not r[1]]), ("held_out", [r for r in rows if r[1]])):
        n = max(1, len(sel))
        out[name] = {k: sum(r[0][k] for r in sel) / n for k in KEYS}
        out[name]["all_three"] = sum(all(r[0].values()) for r in sel) / n
    return out


@torch.no_grad()
def vae_ceiling(vae, n: int = 200, seed: int = 9) -> float:
    """Share of world images whose VAE reconstruction the oracle reads right on all four attributes."""
    from PIL import Image

    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    rec = vae.decode(vae.encode(to_tensor([render(s) for s in scenes]).to(vae.dtype)).latent_dist.mean).sample
    ok = 0
    for s, x in zip(scenes, rec.float().clamp(-1, 1)):
        im = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8"))
        r = read_scene(im)
        ok += all(getattr(s, k) == r[k] for k in ("background", "color", "pattern", "shape"))
    return ok / n


def main() -> None:
    from ..models import load_pipeline

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    args = p.parse_args()
    pipe = load_pipeline(args.model, torch.float32)
    result = {"vae_ceiling_all_four": vae_ceiling(pipe.vae), **prompt_following(pipe, args.steps, args.guidance)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
