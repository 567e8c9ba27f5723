"""Per-image captions and caption dropout (issue 11)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dreambooth.cli import main
from dreambooth.data.captions import identifier_of, with_identifier
from dreambooth.data.examples import tokenize
from dreambooth.errors import UserError
from dreambooth.training.loop import resolved, setup, train
from dreambooth.training.preflight import preflight
from helpers import lora_weights, max_abs_diff


def test_the_identifier_is_the_word_before_the_class_noun():
    assert identifier_of("a photo of sks dog", "a photo of a dog") == "sks"
    assert identifier_of("a photo of zwx backpack", None) == "zwx"
    assert identifier_of("a photo", "a dog") is None


def test_a_caption_without_the_identifier_gets_the_instance_prompt_or_is_refused():
    src = Path("x.txt")
    assert with_identifier("sks dog on a sofa", "a photo of sks dog", "sks", "insert", src) == "sks dog on a sofa"
    assert with_identifier("on a sofa", "a photo of sks dog", "sks", "insert", src) == "a photo of sks dog, on a sofa"
    assert with_identifier("sksy on a sofa", "a photo of sks dog", "sks", "insert", src).startswith("a photo of sks")
    with pytest.raises(UserError, match="x.txt: does not name the subject's identifier 'sks'"):
        with_identifier("on a sofa", "a photo of sks dog", "sks", "require", src)


@pytest.fixture
def captioned(instance_dir) -> Path:
    photos = sorted(p for p in instance_dir.iterdir() if p.suffix != ".txt")
    photos[0].with_suffix(".txt").write_text("sks dog   lying on a red sofa\n", encoding="utf-8")
    photos[1].with_suffix(".txt").write_text("in the snow", encoding="utf-8")
    return instance_dir


def test_each_photo_trains_with_its_own_caption(make_cfg, captioned):
    cfg = resolved(make_cfg(batch_size=len(list(captioned.glob("*.txt"))) + 1))
    plan = preflight(cfg)
    run = setup(cfg, plan, progress=False)
    s = run.data.instance
    expected = {
        0: "sks dog lying on a red sofa",
        1: "a photo of sks dog, in the snow",
        2: "a photo of sks dog",  # no caption file: the instance prompt
    }
    for i, prompt in expected.items():
        assert plan.captions[i] == prompt
        assert torch.equal(s.prompt_ids[s.prompt_of[i]], tokenize(run.comps.tokenizer, prompt)[0])


def test_caption_dropout_trains_some_photos_with_the_empty_prompt_and_zero_changes_nothing(make_cfg, tmp_path):
    cfg = resolved(make_cfg(caption_dropout=0.5, batch_size=8))
    run = setup(cfg, preflight(cfg), progress=False)
    s = run.data.instance
    empty = tokenize(run.comps.tokenizer, "")[0]
    assert torch.equal(s.prompt_ids[-1], empty) and s.drawn_prompts == 1
    g = torch.Generator().manual_seed(0)
    latents, emb, _ = run.data.batch(s, 0, 64, g, run.comps.vae, run.text_encoders, "cpu")
    empty_emb = run.comps.text_encoder(empty[None])[0][0]
    dropped = sum(bool(torch.allclose(e, empty_emb)) for e in emb)
    assert 16 <= dropped <= 48  # about half of 64
    base = lora_weights(train(make_cfg(output_dir=str(tmp_path / "a")), progress=False))
    same = lora_weights(train(make_cfg(output_dir=str(tmp_path / "b"), caption_dropout=0.0), progress=False))
    assert max_abs_diff(base, same) == 0


def test_a_caption_that_is_not_utf8_is_one_line_and_nothing_starts(make_cfg, instance_dir, tmp_path, capsys):
    photo = sorted(instance_dir.iterdir())[0]
    photo.with_suffix(".txt").write_bytes(b"sks dog \xff\xfe on a sofa")
    cfg = make_cfg()
    args = [
        "train",
        "--model",
        cfg.model,
        "--instance-dir",
        str(instance_dir),
        "--instance-prompt",
        "a photo of sks dog",
    ]
    assert main([*args, "--output-dir", str(tmp_path / "run"), "--resolution", "64"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: caption {photo.with_suffix('.txt')}: not UTF-8 text")
    assert not (tmp_path / "run").exists()
    photo.with_suffix(".txt").write_text("on a sofa", encoding="utf-8")
    assert main([*args, "--output-dir", str(tmp_path / "run"), "--caption-identifier", "require"]) == 2
    assert "does not name the subject's identifier 'sks'" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_check_data_reports_captions_and_rejects_one_that_is_not_utf8(captioned, capsys):
    photo = sorted(p for p in captioned.iterdir() if p.suffix != ".txt")[2]
    assert main(["check-data", str(captioned)]) == 0
    out = capsys.readouterr().out
    assert "caption   " in out and "'sks dog lying on a red sofa'" in out and "2 captions" in out
    photo.with_suffix(".txt").write_bytes(b"\xff\xfe\x00bad")
    assert main(["check-data", str(captioned)]) == 2
    assert f"rejected  {photo.with_suffix('.txt').name}: not UTF-8 text" in capsys.readouterr().out
