"""`dreambooth grid`: axes, labels, checkpoints side by side, and the cell cache."""

import pytest
from PIL import Image

import dreambooth.generation as generation
from dreambooth.cli import main
from dreambooth.errors import UserError
from dreambooth.grid import parse_axis


def grid(tiny_model, out, *args) -> int:
    return main(
        [
            "grid",
            "--model",
            str(tiny_model),
            "--prompt",
            "a photo of sks dog",
            "--steps",
            "3",
            "--output-dir",
            str(out),
            *args,
        ]
    )


@pytest.fixture
def count_renders(monkeypatch):
    calls = []
    real = generation.Engine.render

    def counting(self, batch):
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(generation.Engine, "render", counting)
    return calls


def test_grid_size_labels_and_index(tiny_model, lora_with_te, tmp_path, count_renders):
    rc = grid(
        tiny_model,
        tmp_path / "g",
        "--lora",
        str(lora_with_te),
        "--x",
        "guidance=3,7.5",
        "--y",
        "lora-scale-unet=0-1:0.5",
        "--z",
        "seed=0-1",
    )
    assert rc == 0 and sum(count_renders) == 2 * 3 * 2
    for name in ("grid-00.png", "grid-01.png"):
        im = Image.open(tmp_path / "g" / name)
        # 160 px of row labels + 2 columns of 128; title + one line of column labels + 3 rows of 128
        assert im.size == (160 + 2 * 128, 24 + 22 + 3 * 128)
    html = (tmp_path / "g" / "index.html").read_text()
    for label in (
        "guidance=3.0",
        "guidance=7.5",
        "lora-scale-unet=0.0",
        "lora-scale-unet=0.5",
        "lora-scale-unet=1.0",
        "seed=0",
        "seed=1",
    ):
        assert label in html
    assert html.count("<img class='cell'") == 12 and html.count("Sampler: DPM++ 2M Karras") == 12
    assert len(list((tmp_path / "g" / "cells").glob("*.png"))) == 12


def test_overlapping_grid_generates_only_new_cells(tiny_model, tmp_path, count_renders):
    assert grid(tiny_model, tmp_path / "g", "--x", "guidance=3,5", "--y", "seed=0-1") == 0
    assert sum(count_renders) == 4
    count_renders.clear()
    assert grid(tiny_model, tmp_path / "g", "--x", "guidance=3,5,7.5", "--y", "seed=0-1") == 0
    assert sum(count_renders) == 2  # guidance 7.5 only


def test_checkpoints_side_by_side(tiny_model, lora_with_te, tmp_path, capsys):
    assert grid(tiny_model, tmp_path / "g", "--lora", str(lora_with_te), "--x", "checkpoint=2,4,final") == 0
    # step 4 is the final step: the same weights by content, so one cached cell serves both columns
    assert len(list((tmp_path / "g" / "cells").glob("*.png"))) == 2
    assert (tmp_path / "g" / "index.html").read_text().count("<img class='cell'") == 3
    capsys.readouterr()
    rc = grid(tiny_model, tmp_path / "h", "--lora", str(lora_with_te), "--x", "checkpoint=2,3")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "step-3" in err[0] and "--x checkpoint=2,3" in err[0]
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize(
    "spec,values",
    [
        ("seed=0-3", [0, 1, 2, 3]),
        ("steps=20-40:5", [20, 25, 30, 35, 40]),
        ("lora-scale-unet=0.4-1.0:0.3", [0.4, 0.7, 1.0]),
        ("guidance=3,5,7.5", [3.0, 5.0, 7.5]),
        ("seed=1,5-6", [1, 5, 6]),
        ("prompt=a photo of sks dog, on the beach|a sks dog", ["a photo of sks dog, on the beach", "a sks dog"]),
        ("scheduler=ddim,euler-a", ["ddim", "euler-a"]),
    ],
)
def test_axis_values(spec, values):
    assert parse_axis(spec, "--x").values == values


@pytest.mark.parametrize(
    "spec,problem",
    [
        ("guidance", "name=values"),
        ("cfg=3,5", "unknown axis parameter 'cfg'"),
        ("seed=5-3", "malformed range"),
        ("seed=1-", "not a whole number or range"),
        ("steps=a-b", "not a whole number or range"),
        ("seed=0.5-2", "whole numbers"),
        ("scheduler=lms", "unknown scheduler"),
        ("checkpoint=latest", "not a step number"),
        ("guidance=", "no values"),
    ],
)
def test_bad_axes_are_named(spec, problem):
    with pytest.raises(UserError, match=problem) as e:
        parse_axis(spec, "--y")
    assert str(e.value).startswith(f"--y {spec}")


def test_bad_axis_on_the_command_line_exits_2(tiny_model, tmp_path, capsys):
    assert grid(tiny_model, tmp_path / "g", "--x", "sampler=euler") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown axis parameter 'sampler'" in err[0]
