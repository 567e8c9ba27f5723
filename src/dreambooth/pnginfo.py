"""Generation settings in PNG text chunks, in the form AUTOMATIC1111 writes ("parameters") and
ComfyUI, Civitai and other tools read:

    a photo of sks cat in a bucket
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 1024, Size: 512x512, Model: ..., Lora: cat:1.0:0.8
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image, PngImagePlugin

from . import __version__

# Our scheduler names and AUTOMATIC1111's sampler names.
SAMPLERS = {
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "euler": "Euler",
    "euler-a": "Euler a",
    "dpm++2m": "DPM++ 2M",
    "dpm++2m-karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
}
_FROM_SAMPLER = {v.lower(): k for k, v in SAMPLERS.items()}
# AUTOMATIC1111's own pattern for "Key: value" pairs (values with , : or newlines are JSON-quoted).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _quote(text: Any) -> str:
    text = str(text)
    return text if not any(c in text for c in ',\n"') else json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def a1111_text(s: dict) -> str:
    """The "parameters" text for one image's settings (see generation.ImageSettings)."""
    pairs = [
        ("Steps", s["steps"]),
        ("Sampler", SAMPLERS[s["scheduler"]]),
        ("CFG scale", s["guidance"]),
        ("Seed", s["seed"]),
        ("Size", f"{s['width']}x{s['height']}"),
        ("Model", s["model"]),
    ]
    if s.get("lora"):
        pairs += [
            ("Lora", f"{s['lora_name']}:{s['lora_scale_unet']}:{s['lora_scale_text_encoder']}"),
            ("Lora path", s["lora"]),
            ("Lora hash", s["lora_sha256"][:12]),
        ]
    if s.get("zero_terminal_snr"):
        pairs.append(("Noise schedule", "Zero Terminal SNR"))  # AUTOMATIC1111's name for it
    if s.get("embedding"):
        pairs += [("Embedding path", s["embedding"]), ("Embedding hash", s["embedding_sha256"][:12])]
    pairs += [("Scheduler", s["scheduler"]), ("Version", f"dreambooth {__version__}")]
    lines = [s["prompt"]]
    if s.get("negative_prompt"):
        lines.append(f"Negative prompt: {s['negative_prompt']}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


def parse_a1111(text: str) -> dict:
    """Settings from a "parameters" text (ours or another tool's): keys of SamplingConfig."""
    lines = text.strip().split("\n")
    params = dict((k.strip(), _unquote(v)) for k, v in _PARAM.findall(lines[-1])) if len(lines) > 1 else {}
    body = lines[:-1] if params else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"prompt": ["\n".join(prompt).strip()], "negative_prompt": "\n".join(negative).strip()}
    if "Steps" in params:
        out["steps"] = int(params["Steps"])
    if "CFG scale" in params:
        out["guidance"] = float(params["CFG scale"])
    if "Seed" in params:
        out["seed"] = int(params["Seed"])
    if "Size" in params:
        w, h = params["Size"].lower().split("x")
        out["width"], out["height"] = int(w), int(h)
    scheduler = params.get("Scheduler") or _FROM_SAMPLER.get(params.get("Sampler", "").lower())
    if scheduler:
        out["scheduler"] = scheduler
    if "Model" in params:
        out["model"] = params["Model"]
    if params.get("Noise schedule", params.get("Noise Schedule", "")).lower() == "zero terminal snr":
        out["zero_terminal_snr"] = True
    if "Embedding path" in params:
        out["embedding"] = params["Embedding path"]
    if "Lora path" in params:
        out["lora"] = params["Lora path"]
    if "Lora" in params:
        parts = params["Lora"].rsplit(":", 2)
        if len(parts) == 3:
            out["lora_scale_unet"], out["lora_scale_text_encoder"] = float(parts[1]), float(parts[2])
    return out


def save_png(image: Image.Image, path, settings: dict) -> None:
    """Write a PNG carrying its settings: "parameters" (AUTOMATIC1111's text) and "dreambooth" (JSON)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_text(settings))
    info.add_text("dreambooth", json.dumps(settings, sort_keys=True))
    image.save(path, format="PNG", pnginfo=info)


def read_parameters(path) -> str | None:
    with Image.open(path) as im:
        im.load()
        return im.text.get("parameters") if hasattr(im, "text") else im.info.get("parameters")


def settings_from_image(path: str) -> dict:
    """The generate settings that made a PNG (ours, or AUTOMATIC1111's where they carry over)."""
    from pathlib import Path

    from .errors import UserError

    if not Path(path).is_file():
        raise UserError(f"--from-image {path}: no such file")
    try:
        text = read_parameters(path)
    except OSError as e:
        raise UserError(f"--from-image {path}: not a readable image ({type(e).__name__})") from None
    if not text:
        raise UserError(f"--from-image {path}: carries no generation settings (no 'parameters' text chunk)")
    out = parse_a1111(text)
    out["num_images"] = 1
    return out
