"""Generation settings in PNG text chunks: "parameters", AUTOMATIC1111's infotext, which AUTOMATIC1111
("send to txt2img"), ComfyUI (its PNG import) and civitai (resource detection) read, and "dreambooth",
our own JSON with everything (absolute paths, our scheduler names, full hashes):

    a photo of sks cat in a bucket <lora:my-cat:0.8>
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5.0, Seed: 1024, Size: 512x512, Model: ..., Lora hashes: "my-cat: 0123456789ab", Version: dreambooth 0.1.0

Written as AUTOMATIC1111 writes it (modules/processing.py create_infotext, extra_networks_lora.py):
the LoRA is a `<lora:NAME:MULTIPLIER>` tag in the prompt (`<lora:NAME:TE:UNET>` when the text encoder's
and the UNet's strengths differ: the first number is the text encoder's), `Lora hashes` pairs NAME
with AUTOMATIC1111's short hash of the file it loads (the first 12 hex digits of the SHA-256 of a
.safetensors file's tensor data: export.a1111_lora_hash), `Model hash` is the first 10 hex digits of
the SHA-256 of a single-file checkpoint (none for a diffusers folder or hub id, which AUTOMATIC1111
cannot load). The "Negative prompt:" line is always written (ComfyUI imports nothing without it), the
parameters line starts with "Steps: " (civitai looks for it), NAME keeps to [A-Za-z0-9_.-] (civitai's
pattern) and no value holds a double quote (civitai does not read escaped ones).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .. import __version__
from ..errors import UserError

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
    "heun": "Heun",
}
_FROM_SAMPLER = {v.lower(): k for k, v in SAMPLERS.items()}
# AUTOMATIC1111's pattern for "Key: value" pairs (values with , : or newlines are JSON-quoted), and for
# extra networks in the prompt (<lora:NAME:...>, <lyco:...>, <hypernet:...>).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_TYPES = ("lora", "lyco")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def _quote(text: Any) -> str:
    text = str(text)
    return text if not any(c in text for c in ',:\n"') else json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def tag_name(name: str) -> str:
    """A LoRA's name as it can stand in <lora:NAME:...> for every reader (civitai's pattern)."""
    return _NAME_CHARS.sub("_", name) or "lora"


def _number(x: float) -> str:
    """A strength as a plain decimal (civitai reads [0-9.]+, so no exponent)."""
    return f"{float(x):.6f}".rstrip("0").rstrip(".") or "0"


def lora_tag(name: str, text_encoder: float, unet: float) -> str:
    """AUTOMATIC1111's prompt tag: one number sets both strengths; two are the text encoder's, then the UNet's."""
    if text_encoder == unet:
        return f"<lora:{name}:{_number(unet)}>"
    return f"<lora:{name}:{_number(text_encoder)}:{_number(unet)}>"


def a1111_text(s: dict) -> str:
    """The "parameters" text for one image's settings (generation.ImageSettings as a dict, with
    model_name and model_hash, and for a LoRA lora_tag_name and lora_a1111_hash)."""
    prompt = s["prompt"]
    name = s.get("lora_tag_name") or tag_name(s.get("lora_name") or Path(s.get("lora") or "lora").stem)
    if s.get("lora"):
        prompt += " " + lora_tag(name, s["lora_scale_text_encoder"], s["lora_scale_unet"])
    pairs = [
        ("Steps", s["steps"]),
        ("Sampler", SAMPLERS[s["scheduler"]]),
        ("CFG scale", s["guidance"]),
        ("Seed", s["seed"]),
        ("Size", f"{s['width']}x{s['height']}"),
    ]
    if s.get("model_hash"):
        pairs.append(("Model hash", s["model_hash"]))
    pairs.append(("Model", s.get("model_name") or s["model"]))
    if s.get("zero_terminal_snr"):
        pairs.append(("Noise schedule", "Zero Terminal SNR"))  # AUTOMATIC1111's name for it
    if s.get("lora") and s.get("lora_a1111_hash"):
        pairs.append(("Lora hashes", f"{name}: {s['lora_a1111_hash']}"))
    pairs.append(("Version", f"dreambooth {__version__}"))
    lines = [prompt, f"Negative prompt: {s.get('negative_prompt') or ''}"]
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


def extra_networks(prompt: str) -> tuple[str, list[dict]]:
    """The prompt without its LoRA tags, and each tag's name and strengths, read as AUTOMATIC1111 reads
    them (extra_networks.parse_prompt, ExtraNetworkLora.activate): positional NAME, TE, UNET (UNET
    defaults to TE, TE to 1), or named te= / unet= (pure)."""
    loras = []

    def take(m: re.Match) -> str:
        if m.group(1) not in _LORA_TYPES:
            return m.group(0)
        items = m.group(2).split(":")
        positional = [i for i in items if "=" not in i]
        named = dict(i.split("=", 1) for i in items if "=" in i)
        try:
            te = float(named.get("te", positional[1] if len(positional) > 1 else 1.0))
            unet = float(named.get("unet", positional[2] if len(positional) > 2 else te))
        except ValueError:
            raise UserError(f"{m.group(0)}: its strengths are not numbers") from None
        loras.append({"name": positional[0] if positional else "", "text_encoder": te, "unet": unet})
        return ""

    rest = _EXTRA_NETWORK.sub(take, prompt)
    return re.sub(r"[ \t]{2,}", " ", rest).strip(), loras


def parse_a1111(text: str) -> dict:
    """Settings from a "parameters" text (ours or another tool's), by AUTOMATIC1111's rules: the last
    line holds the parameters when it has at least three pairs. Keys of SamplingConfig, and "loras": the
    prompt's LoRA tags (name, text_encoder and unet strengths, hash: its Lora hashes entry)."""
    *lines, last = text.strip().split("\n")
    params = {k.strip(): _unquote(v) for k, v in _PARAM.findall(last)}
    if len(params) < 3:
        lines, params = [*lines, last], {}
    prompt, negative, in_negative = [], [], False
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    text_prompt, loras = extra_networks("\n".join(prompt).strip())
    out: dict[str, Any] = {"prompt": [text_prompt], "negative_prompt": "\n".join(negative).strip()}
    if "Steps" in params:
        out["steps"] = int(params["Steps"])
    if "CFG scale" in params:
        out["guidance"] = float(params["CFG scale"])
    if "Seed" in params:
        out["seed"] = int(params["Seed"])
    if re.fullmatch(r"\d+x\d+", params.get("Size", "")):
        out["width"], out["height"] = (int(v) for v in params["Size"].split("x"))
    scheduler = params.get("Scheduler") or _FROM_SAMPLER.get(params.get("Sampler", "").lower())
    if scheduler:
        out["scheduler"] = scheduler
    if "Model" in params:
        out["model"] = params["Model"]
    if params.get("Noise schedule", params.get("Noise Schedule", "")).lower() == "zero terminal snr":
        out["zero_terminal_snr"] = True
    if loras:  # each tag's strengths, and its Lora hashes entry
        hashes = dict(
            (k.strip(), v.strip()) for k, _, v in (p.partition(":") for p in params.get("Lora hashes", "").split(","))
        )
        out["loras"] = [{**lora, "hash": hashes.get(lora["name"]) or None} for lora in loras]
    return out


def save_png(image: Image.Image, path, settings: dict) -> None:
    """Write a PNG carrying its settings: "parameters" (AUTOMATIC1111's text) and "dreambooth" (JSON),
    each as an uncompressed text chunk (tEXt when ASCII, else UTF-8 iTXt: ComfyUI reads tEXt as UTF-8
    and does not decompress)."""
    info = PngImagePlugin.PngInfo()
    for key, text in (("parameters", a1111_text(settings)), ("dreambooth", json.dumps(settings, sort_keys=True))):
        if text.isascii():
            info.add_text(key, text)
        else:
            info.add_itxt(key, text)
    image.save(path, format="PNG", pnginfo=info)


def read_chunks(path) -> dict[str, str]:
    with Image.open(path) as im:
        im.load()
        return dict(getattr(im, "text", None) or im.info)


def read_parameters(path) -> str | None:
    return read_chunks(path).get("parameters")


# Our JSON's keys that are settings of `generate` (the rest identify what was used: names, hashes).
_OURS = (
    "model",
    "prompt",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "lora",
    "lora_scale_unet",
    "lora_scale_text_encoder",
    "embedding",
    "guidance",
    "steps",
    "scheduler",
    "zero_terminal_snr",
    "max_sequence_length",
)


def settings_from_image(path: str, lora_dir: str | None = None, find_lora: bool = True) -> dict:
    """The generate settings that made a PNG: from our JSON chunk where the PNG has one, else from
    its AUTOMATIC1111 parameters (ours, or another tool's), whose LoRA tag is looked up in lora_dir
    (default: the current folder) by AUTOMATIC1111's hash, then by name (find_lora=False: not at all,
    when --lora is given)."""
    if not Path(path).is_file():
        raise UserError(f"--from-image {path}: no such file")
    try:
        chunks = read_chunks(path)
    except OSError as e:
        raise UserError(f"--from-image {path}: not a readable image ({type(e).__name__})") from None
    ours = _our_settings(chunks.get("dreambooth"))
    if ours is not None and (not ours.get("lora") or Path(ours["lora"]).is_file() or not find_lora):
        return {**ours, "prompt": [ours["prompt"]], "num_images": 1}
    if not chunks.get("parameters"):
        raise UserError(f"--from-image {path}: carries no generation settings (no 'parameters' text chunk)")
    try:
        out = parse_a1111(chunks["parameters"])
    except UserError as e:  # strengths that are not numbers
        raise UserError(f"--from-image {path}: {e}") from None
    if ours is not None:  # our own image whose LoRA moved: the JSON for the rest, the tag finds the LoRA
        out = {**{k: v for k, v in ours.items() if k != "lora"}, **out, "prompt": [ours["prompt"]]}
    loras = out.pop("loras", [])
    if len(loras) > 1:
        names = ", ".join(lora["name"] for lora in loras)
        raise UserError(f"--from-image {path}: its prompt applies {len(loras)} LoRAs ({names}); generate applies one")
    name, short_hash = (loras[0]["name"], loras[0]["hash"]) if loras else (None, None)
    if loras:
        out.update(lora_scale_text_encoder=loras[0]["text_encoder"], lora_scale_unet=loras[0]["unet"])
    if name is not None and find_lora:
        from .a1111 import find_a1111_lora

        folder = Path(lora_dir or ".")
        found = find_a1111_lora(folder, name, short_hash)
        if found is None:
            what = f"'{name}'" + (f" (AUTOMATIC1111 hash {short_hash})" if short_hash else "")
            raise UserError(
                f"--from-image {path}: its prompt applies the LoRA {what}, which is not in {folder.resolve()}; "
                "give --lora-dir (the folder that holds it) or --lora"
            )
        out["lora"] = str(found)
    out["num_images"] = 1
    return out


def _our_settings(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        return None
    return {k: data[k] for k in _OURS if data.get(k) is not None}
