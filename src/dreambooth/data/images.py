"""Finding, checking and preparing training photos.

`inspect_image` says of one file whether it can be used and how (EXIF orientation applied,
transparency composited on white, the first frame of an animation, 16-bit and CMYK converted), or
why not (empty, truncated, not an image, too small, a decompression bomb); `dreambooth check-data`
prints it for a folder, and training refuses a folder with unusable files unless told to skip them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from . import masks
from .pixels import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
MIN_SIDE = 64  # pixels on the shorter side; below this a photo holds too little to learn from
# Pillow refuses images over twice its MAX_IMAGE_PIXELS (179 M pixels) as decompression bombs; a
# 12000 x 12000 photo (144 M) decodes, with a note.
_FORMAT_SUFFIXES = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
    "MPO": (".jpg", ".jpeg"),
}


@dataclass
class Verdict:
    """What check-data says of one file: used (with notes), rejected (with the reason) or ignored."""

    path: Path
    status: str  # "ok", "rejected", "ignored", "caption" (a photo's .txt caption) or "mask" (its .mask.png)
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None


def scan_folder(folder: str | Path) -> list[Verdict]:
    """A verdict for every entry directly in folder, sorted by name."""
    out = []
    for p in sorted(Path(folder).iterdir(), key=lambda q: q.name):
        if p.name.startswith("."):
            out.append(Verdict(p, "ignored", "hidden file"))
        elif p.is_symlink() and not p.exists():
            out.append(Verdict(p, "ignored", "broken or looping link"))
        elif p.is_dir():
            out.append(Verdict(p, "ignored", "a folder (only files directly in the folder are used)"))
        elif p.suffix.lower() == ".txt" and any(p.with_suffix(s).is_file() for s in _all_cases(IMAGE_SUFFIXES)):
            out.append(_caption_verdict(p))
        elif masks.is_mask_file(p):
            why = masks.problem(p)
            photo = masks.photo_of(p)
            out.append(Verdict(p, "rejected", why) if why else Verdict(p, "mask", f"mask of {photo.name}"))
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            out.append(Verdict(p, "ignored", f"not an image file name ({p.suffix or 'no suffix'})"))
        else:
            out.append(inspect_image(p))
    return out


def _all_cases(suffixes) -> list[str]:
    return [c for s in suffixes for c in (s, s.upper())]


def _caption_verdict(p: Path) -> Verdict:
    """A caption file beside an image: used as that photo's prompt when it reads as UTF-8 text."""
    from .captions import read_caption

    try:
        text = read_caption(p)
    except UserError as e:
        return Verdict(p, "rejected", str(e).split(": ", 1)[-1])
    return Verdict(p, "caption", f"caption: {text!r}" if text else "empty caption (the instance prompt is used)")


def check_data_command(cfg) -> int:
    """`dreambooth check-data DIR`: the report printed; exit code 2 when an image is rejected."""
    text, ok = check_data_report(cfg.dir)
    print(text)
    return 0 if ok else 2


def check_data_report(folder: str) -> tuple[str, bool]:
    """`dreambooth check-data`: a line per file and a summary; ok is False when any image is rejected."""
    if not Path(folder).is_dir():
        raise UserError(f"check-data {folder}: no such folder")
    verdicts = scan_folder(folder)
    lines = []
    for v in verdicts:
        if v.status == "ok":
            size = f"{v.size[0]}x{v.size[1]}"
            notes = list(v.notes)
            where = masks.source(v.path)
            if where:
                notes.append(
                    f"masked by {masks.mask_file(v.path).name}" if where == "file" else "masked by its alpha channel"
                )
            lines.append(f"ok        {v.path.name}  {size}" + (f"  ({'; '.join(notes)})" if notes else ""))
        else:
            lines.append(f"{v.status:<9} {v.path.name}: {v.reason}")
    counts = {s: sum(v.status == s for v in verdicts) for s in ("ok", "rejected", "ignored", "caption")}
    captions = f", {counts['caption']} captions" if counts["caption"] else ""
    masked = sum(v.status == "ok" and masks.source(v.path) is not None for v in verdicts)
    captions += f", {masked} masked (--masked-loss)" if masked else ""
    lines.append(
        f"{counts['ok']} usable, {counts['rejected']} rejected, {counts['ignored']} ignored{captions} in {folder}"
    )
    return "\n".join(lines), counts["rejected"] == 0


def inspect_image(path: str | Path) -> Verdict:
    """Decode the file as training would and say whether it can be used, and how."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return Verdict(p, "rejected", "empty file")
        notes: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                fmt, mode, frames = im.format, im.mode, getattr(im, "n_frames", 1)
                orientation = im.getexif().get(0x0112, 1)
                transparent = "transparency" in im.info
                im.load()
                size = ImageOps.exif_transpose(im).size
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            notes.append(f"very large ({size[0]}x{size[1]}), decoded anyway")
    except Image.DecompressionBombError:
        return Verdict(p, "rejected", "a decompression bomb (more pixels than Pillow's safety limit)")
    except UnidentifiedImageError:
        return Verdict(p, "rejected", "not an image (no known image format inside)")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        text = str(e).lower()
        reason = "truncated or corrupt" if "truncat" in text or "broken" in text or isinstance(e, EOFError) else None
        return Verdict(p, "rejected", reason or f"cannot be decoded ({type(e).__name__}: {str(e)[:80]})")
    if min(size) < MIN_SIDE:
        return Verdict(p, "rejected", f"too small ({size[0]}x{size[1]}; at least {MIN_SIDE} px on the shorter side)")
    if fmt in _FORMAT_SUFFIXES and p.suffix.lower() not in _FORMAT_SUFFIXES[fmt]:
        notes.append(f"a {fmt} file named {p.suffix}")
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    if frames > 1:
        notes.append(f"animation of {frames} frames: the first is used")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and transparent):
        notes.append("transparency composited on white")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        notes.append("16-bit, scaled to 8 bits")
    elif mode == "CMYK":
        notes.append("CMYK, converted to RGB")
    elif mode in ("L", "LA", "1"):
        notes.append("grayscale, used as RGB")
    return Verdict(p, "ok", notes=notes, size=size)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden and temporary files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def check_images(paths: list[Path], flag: str) -> None:
    """Open and decode every image, so a broken file fails before any model is loaded."""
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{flag}: {p} is not a readable image ({type(e).__name__})") from None


def instance_images(folder: str | None, skip_bad: bool = False) -> list[Path]:
    """The usable photos of --instance-dir. A file that cannot be used stops training before it starts
    (naming each such file and why), or with skip_bad is left out with a warning."""
    if folder is None or not Path(folder).is_dir():
        raise UserError(f"--instance-dir {folder}: no such folder")
    verdicts = [
        v
        for v in scan_folder(folder)
        if v.status not in ("ignored", "caption", "mask")
        and v.path.suffix.lower() in IMAGE_SUFFIXES
        and not (v.status == "rejected" and masks.is_mask_file(v.path) and masks.photo_of(v.path) is not None)
    ]
    if not verdicts:
        raise UserError(f"--instance-dir {folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    bad = [v for v in verdicts if v.status == "rejected"]
    if bad and not skip_bad:
        listed = "; ".join(f"{v.path.name} ({v.reason})" for v in bad[:4]) + ("; ..." if len(bad) > 4 else "")
        raise UserError(
            f"--instance-dir {folder}: {len(bad)} file(s) cannot be used: {listed}; fix or remove them, or pass "
            "--skip-bad-images (`dreambooth check-data` lists every file)"
        )
    for v in bad:
        log.warning("skipping %s: %s", v.path, v.reason)
    good = [v for v in verdicts if v.status == "ok"]
    for v in good:
        if v.notes:
            log.info("%s: %s", v.path.name, "; ".join(v.notes))
    if not good:
        raise UserError(f"--instance-dir {folder}: no usable image left")
    return [v.path for v in good]


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image with its EXIF orientation applied, as RGB (alpha composited on white, 16-bit
    scaled to 8, the first frame of an animation)."""
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            import numpy as np

            a = np.asarray(im, dtype=np.float64)
            im = Image.fromarray((a / (65535.0 if a.max() > 255 else 255.0) * 255).clip(0, 255).astype("uint8"))
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")
