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
from dreambooth.training.loop import resolved, setup
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


@pytest.mark.parametrize("prompts", ["instance prompt", "captions"])
def test_caption_dropout_gives_its_share_of_examples_the_empty_prompt_and_leaves_the_rest_as_they_were(
    make_cfg, request, prompts
):
    """The same 512 examples drawn with --caption-dropout 0.25 and without: about a quarter (within 4 standard
    deviations of the binomial, 128 +- 39) get the empty prompt's embedding, every other one keeps exactly
    the embedding (its caption, or the instance prompt) and every example its latents (the dropout is drawn
    after the step's other random numbers)."""
    if prompts == "captions":
        request.getfixturevalue("captioned")
    n, p = 512, 0.25

    def draw(dropout):
        cfg = resolved(make_cfg(caption_dropout=dropout))
        run = setup(cfg, preflight(cfg), progress=False)
        g = torch.Generator().manual_seed(0)
        latents, emb, _, _ = run.data.batch(run.data.instance, 0, n, g, run.comps.vae, run.text_encoders, "cpu")
        return run, latents, emb

    run, latents, emb = draw(p)
    plain_run, plain_latents, plain_emb = draw(0.0)
    s = run.data.instance
    empty = tokenize(run.comps.tokenizer, "")[0]
    # one row more, the empty prompt, and it is never drawn but by the dropout
    assert torch.equal(s.prompt_ids[:-1], plain_run.data.instance.prompt_ids) and torch.equal(s.prompt_ids[-1], empty)
    assert torch.equal(latents, plain_latents)
    with torch.no_grad():
        empty_emb = run.comps.text_encoder(empty[None])[0][0]
    dropped = [i for i in range(n) if not torch.equal(emb[i], plain_emb[i])]
    assert all(torch.allclose(emb[i], empty_emb, atol=1e-5) for i in dropped)
    assert not any(torch.allclose(plain_emb[i], empty_emb, atol=1e-3) for i in dropped)  # they had a prompt
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(len(dropped) - n * p) <= 4 * sd, len(dropped)


def test_caption_dropout_0_trains_exactly_as_a_run_without_the_option(make_cfg, tmp_path):
    """Through the command line: --caption-dropout 0 gives bit-equal weights and logged losses to a run that
    does not name the option, while --caption-dropout 0.9 (4 examples: all kept with probability 1e-4)
    changes the weights, so the option does reach training."""
    import csv

    cfg = make_cfg()
    args = ["train", "--model", cfg.model, "--instance-dir", cfg.instance_dir, "--instance-prompt", cfg.instance_prompt]
    args += ["--resolution", "64", "--max-steps", "2", "--batch-size", "2", "--rank", "4", "--learning-rate", "1e-3"]
    args += ["--lr-scheduler", "constant"]
    runs = {"without": [], "zero": ["--caption-dropout", "0"], "some": ["--caption-dropout", "0.9"]}
    for name, extra in runs.items():
        assert main([*args, *extra, "--output-dir", str(tmp_path / name)]) == 0

    def losses(name):
        rows = csv.DictReader(open(tmp_path / name / "train_log.csv"))
        return [(r["loss"], r["instance_loss"], r["prior_loss"]) for r in rows]

    assert len(losses("without")) == 2 and losses("zero") == losses("without")
    assert max_abs_diff(lora_weights(tmp_path / "zero"), lora_weights(tmp_path / "without")) == 0
    assert max_abs_diff(lora_weights(tmp_path / "some"), lora_weights(tmp_path / "without")) > 1e-4


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


def test_textual_inversion_trains_on_the_captions_where_the_photos_have_them(make_cfg, captioned):
    """As kohya's and OneTrainer's TI: captions name the token (a caption without it gets "a photo of a
    <token>" in front, a photo without one that prompt); the token stands for all its vectors. Photos
    without any caption keep the reference templates."""
    photos = sorted(p for p in captioned.iterdir() if p.suffix != ".txt")
    photos[0].with_suffix(".txt").write_text("a <sks-dog> lying on a red sofa", encoding="utf-8")
    ti = dict(method="textual-inversion", token="<sks-dog>", initializer_token="dog", num_vectors=2)
    cfg = resolved(make_cfg(batch_size=3, **ti))
    plan = preflight(cfg)
    assert plan.captions[:3] == [
        "a <sks-dog> lying on a red sofa",
        "a photo of a <sks-dog>, in the snow",
        "a photo of a <sks-dog>",
    ]
    run = setup(cfg, plan, progress=False)
    s = run.data.instance
    spelled = "a <sks-dog> <sks-dog>_1 lying on a red sofa"
    assert torch.equal(s.prompt_ids[s.prompt_of[0]], tokenize(run.comps.tokenizer, spelled)[0])
    for p in photos:
        p.with_suffix(".txt").unlink(missing_ok=True)
    plan = preflight(cfg)
    run = setup(cfg, plan, progress=False)
    assert plan.captions is None and len(run.data.instance.prompt_ids) > 10  # the templates
    assert torch.equal(
        run.data.instance.prompt_ids[0], tokenize(run.comps.tokenizer, "a photo of a <sks-dog> <sks-dog>_1")[0]
    )
