"""How well a toy-world model follows prompts, read by the oracle: `python -m dreambooth.toyworld.evaluate MODEL`.

For the 100 evaluation captions (50 of (shape, colour, background) triples held out of training),
one image each: the share where the oracle finds the requested background, object colour and shape,
each and all three, overall and for seen vs held-out triples. Also the oracle on the VAE's own
reconstructions, the ceiling any model on that VAE has (world images, and each subject on each
background), and whether the model draws each subject described in words on each background.
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from PIL import Image

from ..errors import UserError
from ..families import family_of_pipeline
from ..models import load_pipeline
from .data import eval_captions, to_tensor
from .oracle import attribute_accuracy, read_scene
from .subject import BACKGROUND, DEMO, RECONTEXT, SUBJECTS, Subject
from .world import render, sample_scene

KEYS = ("background", "color", "shape")


@torch.no_grad()
def _draw(pipe, prompts: list[str], seed: int, steps: int, guidance: float) -> list:
    """One 64 px image per prompt, the i-th from seed + i, guided as the pipeline's family is (the FLUX
    twin: true classifier-free guidance, prompts of its T5 tokenizer's 32 tokens)."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    guided = family_of_pipeline(pipe).call_kwargs(None, guidance, False, pipe=pipe, batch=len(prompts))
    return pipe(prompts, num_inference_steps=steps, generator=generators, height=64, width=64, **guided).images


def use_sampler(pipe) -> None:
    """DPM++ 2M Karras for the UNet model (its recipe was measured with it), the family's own for others."""
    family = family_of_pipeline(pipe)
    name = "dpm++2m-karras" if "dpm++2m-karras" in family.samplers() else family.default_sampler
    pipe.scheduler = family.sampler(name, pipe.scheduler.config)


def prompt_following(pipe, steps: int = 25, guidance: float = 5.0, seed: int = 0, batch: int = 25) -> dict:
    """The oracle's accuracy on the 100 evaluation captions (one image each, seed + i), per attribute and
    all three, overall and for seen vs held-out (shape, colour, background) triples."""
    use_sampler(pipe)
    captions = eval_captions()
    rows = []
    for start in range(0, len(captions), batch):
        chunk = captions[start : start + batch]
        images = _draw(pipe, [text for text, _, _ in chunk], seed + start, steps, guidance)
        for (_, (shape, color, background), held), image in zip(chunk, images):
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
def vae_ceiling(vae, n: int = 200, seed: int = 9) -> dict[str, float]:
    """The oracle's accuracy per attribute (and on all four) on the VAE's reconstructions of world images."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    rec = vae.decode(vae.encode(to_tensor([render(s) for s in scenes]).to(vae.dtype)).latent_dist.mean).sample
    pairs = []
    for s, x in zip(scenes, rec.float().clamp(-1, 1)):
        im = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8"))
        pairs.append((s, read_scene(im)))
    return {k: round(v, 3) for k, v in attribute_accuracy(pairs).items()}


def described_subjects(pipe, n: int = 8, steps: int = 25, guidance: float = 5.0, seed: int = 0) -> dict:
    """Can the model draw each subject from words, anywhere? For "a photo of {subject.words} on a {bg}
    background" on the photos' and the four new backgrounds, n images each: the share the oracle reads
    as the subject, and as the subject on the asked background."""
    use_sampler(pipe)
    out = {}
    for name, subject in SUBJECTS.items():
        hits = both = 0
        for bg in (BACKGROUND, *RECONTEXT):
            for im in _draw(pipe, [f"a photo of {subject.words} on a {bg} background"] * n, seed, steps, guidance):
                r = subject.read(im)
                hits += r["subject"]
                both += r["subject"] and r["background"] == bg
        total = n * (1 + len(RECONTEXT))
        out[name] = {"subject": round(hits / total, 3), "subject_on_background": round(both / total, 3)}
    return out


FEATURES = ("subject", "shape", "color", "outline", "pattern_color", "background")


def subject_features(
    model: str, lora: str, subject: Subject, n: int = 8, steps: int = 25, guidance: float = 5.0, scale: float = 1.0
) -> dict:
    """What of a subject a DreamBooth LoRA (a run, checkpoint or file; its UNet part at `scale`) keeps
    where, rendered as the demo renders its rows: for the demo's "a photo of sks {noun}" on the photos'
    background and "... on a {bg} background" on each new one, n images each (seeds 0..n-1), the share
    with each of the subject's features (its shape, colour, outline, pattern colour, all of them) and
    with the asked background, and the colours the oracle read."""
    from ..config import SamplingConfig
    from ..generation import Engine, image_settings
    from .experiment import prompts_of

    engine = Engine()
    sampling = SamplingConfig(model=model, steps=steps, guidance=guidance, lora=lora, lora_scale_unet=scale)
    out = {}
    for kind, prompt, _ in prompts_of(n, subject=subject)[:-1]:  # the class prompt is not asked
        bg = kind.split(":")[1] if ":" in kind else BACKGROUND
        reads = [
            subject.read(im) for im in engine.render([image_settings(sampling, engine, prompt, s) for s in range(n)])
        ]
        want = {"shape": subject.shape, "color": subject.color, "background": bg}
        row = {k: sum((r[k] == want[k]) if k in want else bool(r[k]) for r in reads) / n for k in FEATURES}
        colors: dict[str, int] = {}
        for r in reads:
            colors[r["color"]] = colors.get(r["color"], 0) + 1
        out[bg] = {**{k: round(v, 3) for k, v in row.items()}, "colors_read": colors}
    return out


@torch.no_grad()
def subject_ceiling(
    vae, n: int = 40, seed: int = 5, backgrounds: tuple[str, ...] | None = None, subject: Subject = DEMO
) -> float:
    """Share of a subject's renderings (random size and place, on the photos' background and the
    recontextualisation ones, or on `backgrounds`) whose VAE reconstruction the oracle still reads as
    the subject."""
    rng = random.Random(seed)
    backgrounds = backgrounds or (BACKGROUND, *RECONTEXT)
    images = [subject.random(rng, backgrounds[i % len(backgrounds)]) for i in range(n)]
    rec = vae.decode(vae.encode(to_tensor(images).to(vae.dtype)).latent_dist.mean).sample
    ok = 0
    for x in rec.float().clamp(-1, 1):
        im = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8"))
        ok += subject.read(im)["subject"]
    return ok / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument(
        "--lora", help="a DreamBooth LoRA run (folder or file): read what of --subject it keeps on each background"
    )
    p.add_argument("--subject", choices=sorted(SUBJECTS), default="heart", help="with --lora: the run's subject")
    p.add_argument("--lora-scale", type=float, default=1.0, help="with --lora: the UNet LoRA's scale")
    args = p.parse_args()
    if args.lora:
        try:
            found = subject_features(
                args.model, args.lora, SUBJECTS[args.subject], steps=args.steps, guidance=args.guidance,
                scale=args.lora_scale,
            )  # fmt: skip
        except UserError as e:
            p.error(str(e))
        print(json.dumps(found, indent=2))
        return
    pipe = load_pipeline(args.model, torch.float32)
    result = {
        "vae_ceiling": vae_ceiling(pipe.vae),
        "subject_ceiling": subject_ceiling(pipe.vae),
        "subject_ceiling_by_background": {
            name: {bg: subject_ceiling(pipe.vae, n=16, backgrounds=(bg,), subject=s) for bg in (BACKGROUND, *RECONTEXT)}
            for name, s in SUBJECTS.items()
        },
        "described_subjects": described_subjects(pipe, steps=args.steps, guidance=args.guidance),
        **prompt_following(pipe, args.steps, args.guidance),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
