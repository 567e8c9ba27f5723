"""`dreambooth compare`: Table 1's protocol for every method, end to end on the tiny model."""

import json

import pytest
from PIL import Image

import dreambooth.training.loop as loop
from dreambooth.cli import main
from dreambooth.demo import example_subject


def test_compare_three_methods_on_two_dreambench_subjects(tiny_model, extractors, tmp_path, capsys, monkeypatch):
    dino, clip = extractors
    args = [
        "compare",
        "--subjects",
        str(example_subject()),
        str(example_subject().parent / "teapot"),
        "--methods",
        "lora,full,textual-inversion",
        "--model",
        str(tiny_model),
        "--prompts",
        "2",
        "--output",
        str(tmp_path / "cmp"),
        "--max-steps",
        "3",
        "--resolution",
        "64",
        "--num-class-images",
        "2",
        "--images-per-prompt",
        "2",
        "--steps",
        "2",
        "--dino-model",
        str(dino),
        "--clip-model",
        str(clip),
    ]
    assert main(args) == 0
    out = tmp_path / "cmp"
    table = (out / "table.md").read_text()
    assert "DreamBooth SD (paper) | 0.668 | 0.803 | 0.305" in table
    for method in ("lora", "full", "textual-inversion"):
        assert f"| {method} (ours, 2 subjects) |" in table
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {(r["subject"], r["method"]) for r in rows} == {
        (s, m) for s in ("dog", "teapot") for m in ("lora", "full", "textual-inversion")
    }
    assert all(r["images"] == 4 and r["pres"] is not None for r in rows), [
        (r["method"], r["images"], r["pres"]) for r in rows
    ]
    grid = Image.open(out / "grid-dog.png")
    assert grid.size[1] > 3 * 128  # three method rows
    # resumable per (subject, method): a second run trains nothing
    calls = []
    monkeypatch.setattr(loop, "setup", lambda *a, **k: calls.append(a) or pytest.fail("trained again"))
    capsys.readouterr()
    assert main(args) == 0 and calls == []


def test_compare_needs_a_class_for_unknown_subjects(tiny_model, instance_dir, capsys):
    assert main(["compare", "--subjects", str(instance_dir), "--model", str(tiny_model)]) == 2
    assert "--class-noun" in capsys.readouterr().err
