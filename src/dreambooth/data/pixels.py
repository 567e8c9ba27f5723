"""What every image file and image goes through, below photos and masks alike: the file suffixes read
as images, and the resize-and-crop geometry (a square side or an aspect-ratio bucket; SDXL's
micro-conditioning of it). Pure; Pillow only."""

from __future__ import annotations

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def _wh(target: int | tuple[int, int]) -> tuple[int, int]:
    return (target, target) if isinstance(target, int) else (int(target[0]), int(target[1]))


def crop_box(
    w: int, h: int, target: int | tuple[int, int], crop_xy: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of `resize_and_crop` for a w x h image and a target
    size (a side, or (width, height) of an aspect-ratio bucket) (pure)."""
    tw, th = _wh(target)
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    return nw, nh, round((nw - tw) * crop_xy[0]), round((nh - th) * crop_xy[1])


def resize_and_crop(
    im: Image.Image, target: int | tuple[int, int], crop_xy: tuple[float, float] = (0.5, 0.5)
) -> Image.Image:
    """Resize the image to cover the target (a square side, or a bucket's (width, height)), then crop it
    to the target; crop_xy in [0, 1] places the crop (0.5, 0.5 is the centre crop)."""
    tw, th = _wh(target)
    nw, nh, left, top = crop_box(*im.size, target, crop_xy)
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    return im.crop((left, top, left + tw, top + th))


def micro_conditioning(
    size: tuple[int, int], target: int | tuple[int, int], crop_xy: tuple[float, float], flip: bool
) -> tuple[int, int, int, int, int, int]:
    """SDXL's size and crop conditioning of one training image (Podell et al., 2023, section 2.2):
    (original height, original width, crop top, crop left, target height, target width), the crop
    measured in the resized image, and in the mirrored one when flipped, as diffusers' SDXL scripts
    compute it (pure)."""
    w, h = size
    tw, th = _wh(target)
    nw, _, left, top = crop_box(w, h, target, crop_xy)
    if flip:
        left = nw - tw - left
    return (h, w, top, left, th, tw)
