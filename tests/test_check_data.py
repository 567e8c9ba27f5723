"""Hostile and odd photo folders (issue 8): every file is used correctly (with a note) or rejected
with its name and reason, never a traceback; `dreambooth check-data` reports it; training refuses a
folder with unusable files unless --skip-bad-images."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dreambooth.cli import main
from dreambooth.data.images import inspect_image, load_rgb, scan_folder


def _png_header_only(path, width, height):
    """A tiny PNG that claims to be width x height: a decompression bomb."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _photo(size=(96, 80), color=(200, 100, 50), mode="RGB"):
    return Image.new(mode, size, color if mode == "RGB" else None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    _photo().save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _photo().save(d / "png named.jpg", format="PNG")
    Image.new("CMYK", (96, 80), (0, 128, 255, 0)).save(d / "cmyk.jpg")
    Image.fromarray((np.linspace(0, 65535, 96 * 80).reshape(80, 96)).astype(np.uint16)).save(d / "sixteen.png")
    pal = Image.new("P", (96, 80), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    pal.save(d / "palette.png", transparency=0)
    Image.new("RGBA", (96, 80), (0, 0, 255, 0)).save(d / "rgba.png")
    Image.new("L", (96, 80), 128).save(d / "gray.png")
    rot = _photo((120, 80))
    exif = rot.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    rot.save(d / "rotated.jpg", exif=exif)
    frames = [_photo(color=c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    _photo().save(d / "photo.webp")
    _photo((8, 8)).save(d / "tiny.png")
    Image.new("L", (12000, 12000), 90).save(d / "huge.png")
    _png_header_only(d / "bomb.png", 30000, 30000)
    (d / "notes.txt").write_text("not a photo")
    (d / "fake.png").write_text("this is text, not a PNG")
    (d / ".hidden.jpg").write_bytes(b"")
    _photo().save(d / "ünïcode name.png")
    os.symlink(d / "loop-b", d / "loop-a")
    os.symlink(d / "loop-a", d / "loop-b")
    return d


EXPECTED = {
    "zero.jpg": ("rejected", "empty file"),
    "truncated.jpg": ("rejected", "truncated"),
    "png named.jpg": ("ok", "a PNG file named .jpg"),
    "cmyk.jpg": ("ok", "CMYK"),
    "sixteen.png": ("ok", "16-bit"),
    "palette.png": ("ok", "transparency composited on white"),
    "rgba.png": ("ok", "transparency composited on white"),
    "gray.png": ("ok", "grayscale"),
    "rotated.jpg": ("ok", "EXIF orientation 6 applied"),
    "anim.gif": ("ok", "animation of 3 frames"),
    "photo.webp": ("ok", ""),
    "tiny.png": ("rejected", "too small (8x8"),
    "huge.png": ("ok", "very large (12000x12000)"),
    "bomb.png": ("rejected", "decompression bomb"),
    "notes.txt": ("ignored", "not an image file name"),
    "fake.png": ("rejected", "not an image"),
    ".hidden.jpg": ("ignored", "hidden file"),
    "ünïcode name.png": ("ok", ""),
    "loop-a": ("ignored", "looping link"),
    "loop-b": ("ignored", "looping link"),
}


def test_every_file_gets_the_right_verdict(corpus):
    got = {v.path.name: v for v in scan_folder(corpus)}
    assert set(got) == set(EXPECTED)
    for name, (status, words) in EXPECTED.items():
        v = got[name]
        text = v.reason if status != "ok" else "; ".join(v.notes)
        assert v.status == status and words in text, (name, v)


def test_usable_files_load_as_they_should(corpus):
    assert load_rgb(corpus / "rotated.jpg").size == (80, 120)  # EXIF orientation applied
    assert load_rgb(corpus / "rgba.png").getpixel((5, 5)) == (255, 255, 255)  # transparent -> white
    assert load_rgb(corpus / "palette.png").getpixel((5, 5)) == (255, 255, 255)
    assert load_rgb(corpus / "anim.gif").getpixel((5, 5))[0] > 200  # the first (red) frame
    sixteen = np.asarray(load_rgb(corpus / "sixteen.png"))
    assert sixteen.min() == 0 and sixteen.max() == 255  # the whole 16-bit range, scaled
    assert load_rgb(corpus / "cmyk.jpg").mode == "RGB" and load_rgb(corpus / "gray.png").mode == "RGB"


def test_check_data_reports_and_sets_the_exit_code(corpus, tmp_path, capsys):
    assert main(["check-data", str(corpus)]) == 2
    out = capsys.readouterr().out
    assert "rejected  bomb.png: a decompression bomb" in out and "ok        rotated.jpg  80x120" in out
    assert out.strip().splitlines()[-1].startswith("11 usable, 5 rejected, 4 ignored")
    good = tmp_path / "good"
    good.mkdir()
    for i in range(300):  # a big folder
        _photo(color=(i % 255, 80, 80)).save(good / f"{i:03d}.png")
    assert main(["check-data", str(good)]) == 0
    assert main(["check-data", str(tmp_path / "nope")]) == 2


def test_training_stops_on_bad_files_unless_told_to_skip_them(tiny_model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _photo(color=(50 * i, 90, 200)).save(photos / f"{i}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    args = [
        "train",
        "--model",
        str(tiny_model),
        "--instance-dir",
        str(photos),
        "--instance-prompt",
        "a photo of sks dog",
    ]
    args += ["--resolution", "64", "--max-steps", "1", "--rank", "4", "--lr-scheduler", "constant"]
    assert main([*args, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0] and "--skip-bad-images" in err[0]
    assert not (tmp_path / "run").exists()
    assert main([*args, "--output-dir", str(tmp_path / "run"), "--skip-bad-images"]) == 0
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_inspect_never_raises_on_a_folder_entry(tmp_path):
    (tmp_path / "dir.png").mkdir()
    assert scan_folder(tmp_path)[0].status == "ignored"
    assert inspect_image(tmp_path / "missing.png").status == "rejected"
