"""`dreambooth select`: every checkpoint scored, the DINO/CLIP-T front, a recommendation that
`generate --lora RUN` then uses."""

import json
import shutil

import pytest

from dreambooth.cli import main
from dreambooth.errors import UserError
from dreambooth.evaluation.select import objective_values, pareto_front, parse_objective


def test_front_keeps_what_nothing_beats_on_both():
    rows = [
        {"dino": 0.7, "clip_t": 0.20},
        {"dino": 0.6, "clip_t": 0.30},
        {"dino": 0.6, "clip_t": 0.25},
        {"dino": 0.7, "clip_t": 0.20},
    ]
    assert pareto_front(rows) == [True, True, False, True]  # ties do not beat each other


def test_objective_normalises_and_pres_counts_against():
    rows = [{"dino": 0.5, "clip_t": 0.2, "pres": 0.6}, {"dino": 0.7, "clip_t": 0.3, "pres": 0.4}]
    assert objective_values(rows, {"dino": 1, "clip_t": 1}) == [0.0, 2.0]
    assert objective_values(rows, {"pres": 1}) == [0.0, 1.0]  # lower PRES is better
    assert parse_objective("dino=2,clip_t") == {"dino": 2.0, "clip_t": 1.0}
    with pytest.raises(UserError, match="unknown metric 'fid'"):
        parse_objective("fid=1")


def test_select_scores_every_checkpoint_and_generate_uses_the_choice(
    tiny_model, lora_with_te, extractors, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(lora_with_te, run)  # checkpoints at steps 2 and 4 (= the final weights)
    dino, clip = extractors
    rc = main(
        [
            "select",
            "--run",
            str(run),
            "--dino-model",
            str(dino),
            "--clip-model",
            str(clip),
            "--prompts",
            "2",
            "--images-per-prompt",
            "2",
            "--num-class-images",
            "0",
            "--steps",
            "2",
            "--scales",
            "0.5,1",
            "--real",
            str(tmp_path / "no-photos"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()  # a bad --real: one line, nothing written
    assert rc == 2 and len(err) == 1 and "--real" in err[0], err
    assert not (run / "selection.json").exists()
    rc = main(
        [
            "select",
            "--run",
            str(run),
            "--dino-model",
            str(dino),
            "--clip-model",
            str(clip),
            "--prompts",
            "2",
            "--images-per-prompt",
            "2",
            "--num-class-images",
            "0",
            "--steps",
            "2",
            "--scales",
            "0.5,1",
        ]
    )
    assert rc == 0
    sel = json.loads((run / "selection.json").read_text())
    assert len(sel["prompts"]) == 2
    assert len(list((run / "selection" / "step-2-s1-g7.5" / "generated").glob("*.png"))) == 2 * 2
    steps = sorted({c["step"] for c in sel["candidates"]})
    assert steps == [2, 4] and len(sel["candidates"]) == 4  # the final weights equal step 4: not scored twice
    assert any(c["pareto"] for c in sel["candidates"])
    best = max((c for c in sel["candidates"] if c["pareto"]), key=lambda c: c["objective"])
    assert (sel["step"], sel["lora_scale_unet"]) == (best["step"], best["lora_scale_unet"])
    for name in ("selection.csv", "selection.md", "dino.png", "clip_t.png"):
        assert (run / "selection" / name).exists()
    assert "**recommended**" in capsys.readouterr().out
    card = (run / "README.md").read_text()  # the model card now shows the recommendation
    assert "## Measured" in card and f'"step": {sel["step"]}' in card

    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model),
                "--lora",
                str(run),
                "--prompt",
                "a sks dog",
                "--steps",
                "2",
                "--num-images",
                "1",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    used = json.loads(next(out.glob("*.json")).read_text())
    assert used["lora_scale_unet"] == sel["lora_scale_unet"] and f"step-{sel['step']}" in used["lora"]
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model),
                "--lora",
                str(run),
                "--prompt",
                "a sks dog",
                "--steps",
                "2",
                "--num-images",
                "1",
                "--lora-scale-unet",
                "0.3",
                "--no-selection",
                "--output-dir",
                str(tmp_path / "g2"),
            ]
        )
        == 0
    )
    used = json.loads(next((tmp_path / "g2").glob("*.json")).read_text())
    assert used["lora_scale_unet"] == 0.3 and "checkpoints" not in used["lora"]


@pytest.mark.parametrize(
    "kind,options",
    [
        ("kohya", dict(save_format="kohya")),
        ("kohya-pivotal", dict(save_format="kohya", train_identifier_embedding=True)),
        ("full", dict(method="full")),
        ("textual-inversion", dict(method="textual-inversion", token="<sks-dog>", initializer_token="dog")),
    ],
)
def test_select_scores_runs_of_every_method_and_layout(kind, options, make_cfg, extractors, tmp_path):
    """Issue 18.6: runs saved in kohya's layout (pivotal ones too), full fine-tunes and Textual Inversion
    runs were 'holds no checkpoint'; each checkpoint is scored with the method's own weights."""
    from dreambooth.training.loop import train

    run = train(make_cfg(max_steps=2, checkpoint_every=1, **options), progress=False)
    dino, clip = extractors
    args = ["select", "--run", str(run), "--dino-model", str(dino), "--clip-model", str(clip), "--prompts", "1",
            "--images-per-prompt", "1", "--num-class-images", "0", "--steps", "2"]  # fmt: skip
    assert main(args) == 0
    selection = json.loads((run / "selection.json").read_text())
    assert [c["step"] for c in selection["candidates"]] == [1, 2]
    assert all(0 <= c["dino"] <= 1 for c in selection["candidates"])
    prompt = selection["prompts"][0]
    assert ("<sks-dog> dog" in prompt) if kind == "textual-inversion" else ("sks dog" in prompt)


def test_select_can_rank_checkpoints_by_the_validation_loss(make_cfg, extractors, tmp_path, capsys):
    """With --validation-loss-every the run logs the loss at fixed noise at each checkpoint's step:
    select reports it beside the paper's metrics and can put it in the objective (lower is better);
    without it that objective is one line."""
    import csv

    from dreambooth.training.loop import train

    run = train(make_cfg(output_dir=str(tmp_path / "run"), max_steps=3, checkpoint_every=1, learning_rate=1e-2,
                         validation_loss_every=1), progress=False)  # fmt: skip
    logged = {int(r["step"]): float(r["validation_loss"]) for r in csv.DictReader(open(run / "train_log.csv"))}
    dino, clip = extractors
    args = ["select", "--run", str(run), "--dino-model", str(dino), "--clip-model", str(clip), "--prompts", "1",
            "--images-per-prompt", "1", "--num-class-images", "0", "--steps", "2"]  # fmt: skip
    assert main([*args, "--objective", "validation_loss=1"]) == 0
    selection = json.loads((run / "selection.json").read_text())
    assert {c["step"]: c["validation_loss"] for c in selection["candidates"]} == logged
    assert selection["step"] == min(logged, key=logged.get)
    plain = train(make_cfg(output_dir=str(tmp_path / "plain"), max_steps=2, checkpoint_every=1), progress=False)
    capsys.readouterr()
    assert main([*args[:2], str(plain), *args[3:], "--objective", "validation_loss=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--validation-loss-every" in err[0], err
