"""The bundled toy-world model (issue 6): `--model toyworld` in every command, its VAE and prompt
following measured by the oracle, the demo's subject, and the paper's claims in a short experiment."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth.toyworld.experiment import NOUN, prompts_of, score, subject_dir, table
from dreambooth.toyworld.subject import photos, random_subject, read_subject
from dreambooth.toyworld.world import samples


@pytest.fixture(scope="module")
def toy_pipe():
    from dreambooth.models import load_pipeline

    return load_pipeline("toyworld")


def test_the_bundled_subject_photos_are_the_rendered_subject_and_the_oracle_reads_it():
    files = sorted(subject_dir().glob("*.png"))
    assert len(files) == 5
    for f, im in zip(files, photos()):
        assert np.array_equal(np.asarray(Image.open(f).convert("RGB")), np.asarray(im)), f
    rng = random.Random(1)
    readings = [
        read_subject(random_subject(rng, bg)) for bg in ("white", "gray", "green", "blue", "yellow") for _ in range(20)
    ]
    assert all(r["subject"] for r in readings)
    world = [read_subject(im) for im, _, _ in samples(300, seed=3)]
    assert not any(r["subject"] for r in world)  # the base world never has it
    assert sum(r["outline"] or r["pattern_color"] for r in world) / len(world) < 0.15


def test_score_counts_each_measure():
    subject = {"shape": NOUN, "color": "orange", "pattern": "dotted", "background": "white", "outline": True}
    hit = {**subject, "pattern_color": True, "subject": True}
    plain = {"shape": NOUN, "color": "red", "pattern": "plain", "background": "gray", "outline": False}
    miss = {**plain, "pattern_color": False, "subject": False}
    readings = {
        "subject": [hit, hit, miss, hit],
        "recontext:green": [{**hit, "background": "green"}, {**miss, "background": "green"}],
        "recontext:blue": [{**hit, "background": "white"}, {**miss, "background": "gray"}],
        "class": [miss, miss, {**miss, "color": "blue"}, hit],
    }
    s = score(readings)
    assert s["subject_fidelity"] == 0.75 and s["subject_features"]["outline"] == 0.75
    assert s["subject_outline"] == s["subject_pattern"] == s["subject_color"] == 0.75
    assert s["subject_features"]["shape"] == 1.0 and s["subject_features_mean"] == (1.0 + 3 * 0.75) / 4
    assert s["recontext_background"] == 0.5 and s["recontext_subject"] == 0.5 and s["recontext_both"] == 0.25
    assert s["class_leakage"] == 0.25 and s["class_as_subject"] == 0.25
    assert s["class_diversity"] == 0.75  # 3 distinct (colour, pattern, background) of 4
    assert s["subject_photo_background"] == 0.75  # "sks heart" drawn on the photos' white
    assert score(readings, photo_background="gray")["subject_photo_background"] == 0.25
    assert "| base model | 0.75 | 0.81 |" in table({"base": s})
    kinds = [k for k, _, _ in prompts_of(4)]
    assert kinds[0] == "subject" and kinds[-1] == "class" and len(kinds) == 6
    assert prompts_of(4)[0][1] == "a photo of sks heart"


def test_toyworld_is_a_builtin_model_name_with_its_native_64px(tmp_path, monkeypatch):
    from dreambooth.errors import UserError
    from dreambooth.models import check_model, native_size, resolve

    check_model("toyworld")
    assert resolve("toyworld").endswith("toyworld-model") and native_size("toyworld") == 64
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toyworld").mkdir()  # a local folder of that name wins, as with hub ids
    with pytest.raises(UserError, match="not a diffusers model folder"):
        check_model("toyworld")


def test_generate_on_toyworld_defaults_to_64px(tmp_path):
    from dreambooth.cli import main

    out = tmp_path / "gen"
    rc = main(
        [
            "generate",
            "--model",
            "toyworld",
            "--prompt",
            "a photo of a red circle on a blue background",
            "--steps",
            "20",
            "--guidance",
            "5",
            "--num-images",
            "1",
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 0
    (png,) = sorted(out.glob("*.png"))
    im = Image.open(png)
    assert im.size == (64, 64)
    read = read_subject(im)
    assert read["background"] == "blue" and read["color"] == "red"


def test_the_vae_keeps_what_the_oracle_and_the_subject_need(toy_pipe):
    from dreambooth.toyworld.evaluate import subject_ceiling, vae_ceiling

    ceiling = vae_ceiling(toy_pipe.vae, n=100)
    assert ceiling["background"] >= 0.98 and ceiling["color"] >= 0.9 and ceiling["shape"] >= 0.9, ceiling
    # The subject survives the VAE on the photos' white, on green, yellow and blue; on gray its purple
    # dots come back grey (measured: 0.90 over all five backgrounds, 0.44 on gray; README)
    assert subject_ceiling(toy_pipe.vae, n=24, backgrounds=("white", "green", "yellow", "blue")) >= 0.9


def test_the_model_follows_prompts_on_held_out_combinations(toy_pipe):
    from dreambooth.toyworld.evaluate import prompt_following

    result = prompt_following(toy_pipe, steps=10)  # measured 0.91 (held-out 0.96) at 10 steps, 0.88 at 20
    assert result["all"]["all_three"] >= 0.8, result
    assert result["held_out"]["all_three"] >= 0.6, result


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A short version of `dreambooth demo`: fewer training and denoising steps and images than the demo's
    defaults, and no Textual Inversion row (nothing here asserts on it)."""
    from dreambooth.toyworld.experiment import ExperimentConfig, run_experiment

    out = tmp_path_factory.mktemp("toy") / "demo"
    cfg = ExperimentConfig(output_dir=out, max_steps=SHORT_STEPS, ti_steps=0, images=8, num_class_images=32, steps=12)
    return out, run_experiment(cfg, progress=False)


SHORT_STEPS = 300


def test_a_short_experiment_shows_what_the_paper_claims(experiment):
    """Measured with the demo's settings at 2500 steps (README): DreamBooth learns the subject (with prior,
    whole in 88 % of images) and without prior "a heart" becomes it (leakage 1.00, diversity 0.06 against
    0.81 with prior). The short run here checks the same directions; at 300 steps (12 denoising steps,
    the 128-wide model, text-encoder rate 1e-3, the cosine decay and prior weight 0.6 of 2026-12-06; the
    same figures at 0.5) the outline is learned
    (measured 1.00 without prior, 0.88 with it; the base model outlines a quarter of its hearts here),
    and prior preservation keeps more of the class (leakage 0.38 against 0.75, diversity 0.75 against
    0.38; at 200 steps and a constant rate the run without prior had not yet collapsed: diversity 0.50
    both)."""
    out, summary = experiment
    r = summary["results"]
    print(summary["table"])
    base, db, prior = r["base"], r["dreambooth"], r["dreambooth_prior"]
    assert base["subject_fidelity"] == 0.0  # "sks heart" means nothing to the base model
    assert db["subject_outline"] >= 0.5, r  # the subject's outline is learned
    assert db["subject_outline"] >= base["subject_outline"] + 0.25, r
    assert prior["recontext_background"] >= 0.75, r  # "on a green background" is honoured
    assert prior["class_leakage"] < db["class_leakage"], r  # prior preservation keeps "a heart" any heart
    assert prior["class_diversity"] > db["class_diversity"], r
    assert Image.open(out / "toyworld_grid.png").size[0] > 500
    assert (out / "toyworld_table.md").read_text().startswith("| model |")


def test_dino_and_clip_metrics_run_on_the_toy_world(experiment, extractors, tmp_path):
    import json

    from dreambooth.cli import main

    out, _ = experiment
    templates = tmp_path / "prompts.txt"
    templates.write_text("a photo of {identifier} {class}\na photo of {identifier} {class} on a green background\n")
    dino, clip = extractors
    args = [
        "evaluate",
        "--model",
        "toyworld",
        "--lora",
        str(out / "runs" / "dreambooth_prior"),
        "--real",
        str(subject_dir()),
        "--class-noun",
        "heart",
        "--prompts",
        str(templates),
        "--images-per-prompt",
        "2",
        "--num-class-images",
        "2",
        "--steps",
        "10",
        "--dino-model",
        str(dino),
        "--clip-model",
        str(clip),
        "--output-dir",
        str(tmp_path / "ev"),
    ]
    assert main(args) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_generated"] == 4 and all(-1 <= m[k] <= 1 for k in ("dino", "clip_i", "clip_t", "pres"))


def test_evaluate_reads_what_of_the_subject_a_lora_keeps_on_each_background(experiment, monkeypatch, capsys):
    """`python -m dreambooth.toyworld.evaluate MODEL --lora RUN --subject S`: each of the subject's features
    on the photos' and the new backgrounds (how the recontext failure was read, BENCHMARKS.md)."""
    import json
    import sys

    from dreambooth.toyworld import evaluate
    from dreambooth.toyworld.subject import DEMO, RECONTEXT

    out, summary = experiment
    run = str(out / "runs" / "dreambooth_prior")
    found = evaluate.subject_features("toyworld", run, DEMO, n=4, steps=12)
    assert list(found) == ["white", *RECONTEXT]
    assert all(sum(row["colors_read"].values()) == 4 for row in found.values())
    assert found["white"]["outline"] >= 0.5, found  # learned in 200 steps, as the short experiment says
    assert found["green"]["background"] >= 0.5 and found["blue"]["background"] >= 0.5, found
    assert all(row["subject"] <= min(row["color"], row["outline"], row["pattern_color"]) for row in found.values())
    argv = ["evaluate", "toyworld", "--lora", run, "--subject", "heart", "--steps", "2", "--lora-scale", "0.5"]
    monkeypatch.setattr(sys, "argv", argv)
    evaluate.main()
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"white", *RECONTEXT} and set(printed["gray"]) == {*evaluate.FEATURES, "colors_read"}
    monkeypatch.setattr(sys, "argv", ["evaluate", "toyworld", "--lora", str(out / "no-such-run")])
    with pytest.raises(SystemExit) as exit_:
        evaluate.main()
    assert exit_.value.code == 2 and "no-such-run" in capsys.readouterr().err


def test_the_flux_twin_is_a_builtin_flux_model_that_follows_prompts():
    """`--model toyworld-flux` (issue 22): the FLUX.1-architecture twin, 64 px, 32-token T5, true
    classifier-free guidance; measured by the oracle as the UNet model is (README)."""
    from dreambooth.models import default_guidance, family_of, load_pipeline, native_size, t5_length
    from dreambooth.toyworld.evaluate import prompt_following
    from dreambooth.toyworld.experiment import ExperimentConfig, train_configs

    assert family_of("toyworld-flux").name == "flux" and native_size("toyworld-flux") == 64
    assert t5_length("toyworld-flux") == 32 and default_guidance("toyworld-flux") == 1.0
    configs = train_configs(ExperimentConfig(output_dir=Path("d"), model="toyworld-flux"))
    assert set(configs) == {"dreambooth", "dreambooth_prior"}  # no Textual Inversion on FLUX
    assert configs["dreambooth"].lora_targets == "attn,ff" and configs["dreambooth"].model == "toyworld-flux"
    result = prompt_following(
        load_pipeline("toyworld-flux"), steps=10
    )  # measured 0.77 (held-out 0.78) at 10 steps, 0.79 at 20
    assert result["all"]["all_three"] >= 0.6, result


def test_the_sweeps_oracle_reads_the_photos_background_and_skips_their_masks(tmp_path):
    import shutil

    from dreambooth.sweep_report import photos_background
    from dreambooth.toyworld.subject import DEMO, photo_masks

    shutil.copytree(subject_dir(), tmp_path / "photos")
    for path, mask in zip(sorted((tmp_path / "photos").glob("*.png")), photo_masks()):
        mask.save(path.with_name(f"{path.stem}.mask.png"))  # black backgrounds: read, they would tie
    assert photos_background(str(tmp_path / "photos"), DEMO) == "white"
    yellow = tmp_path / "yellow"
    yellow.mkdir()
    for i, im in enumerate(photos("yellow")):
        im.save(yellow / f"{i}.png")
    assert photos_background(str(yellow), DEMO) == "yellow" and photos_background(None, DEMO) is None
