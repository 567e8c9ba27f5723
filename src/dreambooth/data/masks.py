"""Masks of the subject in its photos, for `--masked-loss`: `photo.mask.png` beside `photo.jpg` (white:
the subject, black: the rest; grey values weigh in between), or else the photo's own alpha channel
(kohya's and OneTrainer's conventions). A mask goes through the photo's resize, crop and flip and is
averaged down to the latent grid, where it weighs the instance loss: 1 on the subject, --unmasked-weight
on the rest. Class images are never masked."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

SUFFIX = ".mask.png"


def is_mask_file(p: Path) -> bool:
    return p.name.lower().endswith(SUFFIX)


def mask_file(photo: Path) -> Path:
    return photo.with_name(photo.stem + SUFFIX)


def photo_of(mask: Path) -> Path | None:
    """The photo a mask file belongs to (the image beside it with its stem), or None."""
    from .pixels import IMAGE_SUFFIXES

    stem = mask.name[: -len(SUFFIX)]
    for suffix in IMAGE_SUFFIXES:
        for cased in (suffix, suffix.upper()):
            candidate = mask.with_name(stem + cased)
            if candidate.is_file():
                return candidate
    return None


def _alpha(photo: Path) -> Image.Image | None:
    """The photo's alpha channel (EXIF orientation applied) where it has transparent pixels, else None."""
    with Image.open(photo) as im:
        im.seek(0)
        if im.mode not in ("RGBA", "LA", "PA") and not (im.mode == "P" and "transparency" in im.info):
            return None
        alpha = ImageOps.exif_transpose(im).convert("RGBA").getchannel("A")
    return alpha if alpha.getextrema()[0] < 255 else None


def source(photo: Path) -> str | None:
    """Where the photo's mask comes from: 'file' (photo.mask.png), 'alpha', or None."""
    if mask_file(photo).is_file():
        return "file"
    return "alpha" if _alpha(photo) is not None else None


def load_mask(photo: Path) -> Image.Image | None:
    """The photo's mask as a greyscale image of the photo's size (EXIF orientation applied), or None;
    UserError naming the mask file when it cannot be one (not an image, another size, empty)."""
    path = mask_file(photo)
    if not path.is_file():
        return _alpha(photo)
    try:
        with Image.open(path) as im:
            mask = ImageOps.exif_transpose(im).convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: not an image ({type(e).__name__})") from None
    with Image.open(photo) as im:
        size = ImageOps.exif_transpose(im).size
    if mask.size != size:
        raise UserError(
            f"{path}: {mask.size[0]}x{mask.size[1]}, and its photo {photo.name} is {size[0]}x{size[1]}; "
            "a mask must be the photo's size"
        )
    if mask.getextrema()[1] == 0:
        raise UserError(f"{path}: empty (all black: no pixel of the subject)")
    return mask


def problem(mask: Path) -> str | None:
    """What is wrong with a mask file (for check-data), or None."""
    photo = photo_of(mask)
    if photo is None:
        return "a mask with no photo beside it of the same name"
    try:
        load_mask(photo)
    except UserError as e:
        return str(e).split(": ", 1)[-1]
    return None


def latent_weights(mask: Image.Image, target, flip: bool, crop_xy, grid: tuple[int, int], unmasked: float):
    """(1, h, w) loss weights on the latent grid: the mask resized and cropped as its photo is, flipped
    with it, averaged over each latent cell; 1 on the subject, `unmasked` where the mask is black."""
    import torch

    from .pixels import resize_and_crop

    im = resize_and_crop(mask, target, crop_xy)
    m = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(1, 1, im.height, im.width).float() / 255
    m = torch.nn.functional.adaptive_avg_pool2d(m, grid)[0]
    if flip:
        m = m.flip(-1)
    return unmasked + (1.0 - unmasked) * m
