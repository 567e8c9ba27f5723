"""Photos as users have them: rotated by EXIF, with alpha, grey, odd sizes."""

import numpy as np
import pytest
from PIL import Image

from dreambooth.data.examples import to_pixels
from dreambooth.data.images import list_images, load_rgb
from dreambooth.data.pixels import resize_and_crop


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (80, 40), "white")
    im.paste((255, 0, 0), (0, 0, 40, 40))  # left half red
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    shown = load_rgb(tmp_path / "rot.jpg")
    assert shown.size == (40, 80)  # portrait, as a photo viewer shows it
    top = np.asarray(shown)[:20].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 80  # the red half is now on top


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    Image.new(mode, (30, 20)).save(tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg")
    (path,) = list_images(tmp_path)
    assert load_rgb(path).mode == "RGB"


def test_shorter_side_is_resized_then_centre_cropped():
    im = Image.new("RGB", (300, 100), "black")
    im.paste((0, 255, 0), (100, 0, 200, 100))  # the centre third is green
    out = resize_and_crop(im, 64)
    assert out.size == (64, 64)
    assert np.asarray(out)[:, 8:56, 1].min() > 200  # the crop is the green centre


def test_pixels_are_in_minus_one_one_and_flip_mirrors(tmp_path):
    im = Image.new("RGB", (64, 64), "black")
    im.paste((255, 255, 255), (0, 0, 32, 64))
    im.save(tmp_path / "half.png")
    x = to_pixels(tmp_path / "half.png", 64, flip=False)
    assert x.shape == (3, 64, 64) and x.min() == -1 and x.max() == 1
    assert x[:, :, 0].mean() == 1 and to_pixels(tmp_path / "half.png", 64, flip=True)[:, :, 0].mean() == -1


def test_hidden_and_non_image_files_are_skipped(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
