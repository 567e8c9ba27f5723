"""`dreambooth sweep` (issue 11): one run per combination, resumable, scored and ranked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dreambooth.cli import main
from dreambooth.demo import example_subject


@pytest.fixture
def base_config(tmp_path, tiny_model) -> Path:
    f = tmp_path / "base.yaml"
    f.write_text(
        yaml.safe_dump(
            dict(
                model=str(tiny_model),
                instance_dir=str(example_subject()),
                instance_prompt="a photo of sks dog",
                resolution=64,
                max_steps=2,
                rank=4,
                checkpoint_every=2,
                lr_scheduler="constant",
            )
        )
    )
    return f


@pytest.mark.parametrize(
    "vary,message",
    [
        ("learning-rat=1e-4,3e-4", "'learning-rat' is not a training option a sweep can vary"),
        ("output-dir=a,b", "'output-dir' is not a training option a sweep can vary"),
        ("learning-rate=1e-4,fast", "--vary learning-rate=1e-4,fast: 'fast'"),
        ("lr-scheduler=constant,wobbly", "must be one of"),
        ("learning-rate", "write it as NAME=VALUE,VALUE"),
        ("rank=4,4", "a value is given twice"),
    ],
)
def test_bad_axes_are_one_line_and_nothing_starts(vary, message, base_config, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(base_config), "--output-dir", str(out), "--vary", vary]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_bad_combination_is_refused_before_any_run_trains(base_config, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(base_config), "--output-dir", str(out), "--vary", "rank=4,0"]
    assert main(args) == 2
    assert "run rank-0: --rank: must be at least 1" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_sweep_trains_every_combination_keeps_finished_runs_and_resumes_unfinished_ones(base_config, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(base_config), "--output-dir", str(out)]
    args += ["--vary", "learning-rate=1e-3,1e-6", "--vary", "rank=2", "--parallel", "2"]
    assert main(args) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["learning-rate-0.001_rank-2", "learning-rate-1e-06_rank-2"]
    for name in runs:
        assert json.loads((out / "runs" / name / "run.json").read_text())["status"] == "finished"
    config = yaml.safe_load((out / "runs" / "learning-rate-1e-06_rank-2" / "config.yaml").read_text())
    assert config["learning_rate"] == 1e-6 and config["rank"] == 2 and config["max_steps"] == 2
    report = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in report["runs"]] == ["finished"] * 2
    # again: finished runs are kept; a run stopped after its checkpoint (no final weights) is resumed
    kept = out / "runs" / runs[0] / "pytorch_lora_weights.safetensors"
    mtime = kept.stat().st_mtime_ns
    unfinished = out / "runs" / runs[1]
    (unfinished / "run.json").unlink()
    (unfinished / "pytorch_lora_weights.safetensors").unlink()
    caplog.clear()
    assert main(args) == 0
    err = caplog.text
    assert "1 finished before, 1 to train" in err and f"resuming {runs[1]}" in err
    assert kept.stat().st_mtime_ns == mtime
    assert (unfinished / "pytorch_lora_weights.safetensors").is_file()


def test_sweep_evaluate_scores_every_checkpoint_with_the_papers_metrics(base_config, tmp_path, extractors):
    """In either layout a run is saved in (issue 18.6: a run saved with --save-format kohya was 'holds no
    checkpoint' to the sweep's scoring)."""
    dino, clip = extractors
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(base_config), "--output-dir", str(out), "--vary", "save-format=kohya,diffusers"]
    args += ["--evaluate", "--dino-model", str(dino), "--clip-model", str(clip), "--prompts", "2"]
    args += ["--images-per-prompt", "1", "--num-class-images", "2", "--steps", "2"]
    assert main(args) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert {r["run"] for r in report["candidates"]} == {"save-format-kohya", "save-format-diffusers"}
    assert all({"dino", "clip_i", "clip_t", "pres", "objective", "pareto"} <= set(r) for r in report["candidates"])
    assert report["recommended"]["pareto"]
    for f in ("sweep.md", "sweep.csv", "dino.png", "clip_t.png", "grid.png"):
        assert (out / f).is_file(), f
    assert "**recommended**" in (out / "sweep.md").read_text()


def test_on_the_toy_world_the_sweep_ranks_a_far_too_low_learning_rate_below_a_good_one(tmp_path):
    """The write-up this project began from found lr 1e-6 underfit by eye; the sweep must find it too
    (measured on the richer toy-world model: the oracle's mean share of the subject's four features 0.875
    at lr 1e-3 against 0.562 at 1e-6 after 200 steps, 12 denoising steps as at 25; after 150 steps 0.625
    against 0.562, too close to tell; the base model already draws a heart, often outlined, so 1e-6 is
    not at 0)."""
    from dreambooth.toyworld.experiment import subject_dir

    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            dict(
                model="toyworld",
                instance_dir=str(subject_dir()),
                instance_prompt="a photo of sks heart",
                max_steps=200,
                checkpoint_every=200,
                lr_warmup_steps=20,
                rank=8,
                lora_targets="attn,ff,conv,proj",
                train_text_encoder=True,
                text_encoder_lr=5e-4,
            )
        )
    )
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(base), "--output-dir", str(out), "--vary", "learning-rate=1e-3,1e-6"]
    scoring = ["--evaluate", "--images-per-prompt", "4", "--guidance", "5", "--steps", "12", "--parallel", "2"]
    assert main([*args, *scoring]) == 0
    report = json.loads((out / "sweep.json").read_text())
    best = {r["run"]: r["best"] for r in report["runs"]}
    assert best["learning-rate-0.001"]["fidelity"] >= best["learning-rate-1e-06"]["fidelity"] + 0.2
    # the whole subject (all four features in one image) is never more frequent than its features' mean
    assert all(0 <= b["whole"] <= b["fidelity"] for b in best.values()), best
    assert report["recommended"]["run"] == "learning-rate-0.001"


def test_a_failed_run_does_not_stop_the_others_and_the_report_says_why(base_config, tmp_path):
    import shutil

    from dreambooth.demo import example_subject
    from dreambooth.sweep import SweepConfig, plan, train_all

    gone = tmp_path / "photos-b"
    shutil.copytree(example_subject(), gone)
    vary = [f"instance-dir={example_subject()},{gone}", "learning-rate=1e-3"]
    cfg = SweepConfig(config=str(base_config), output_dir=str(tmp_path / "sweep"), vary=vary)
    planned = plan(cfg)  # checked while both folders are there
    shutil.rmtree(gone)  # then one goes missing before its run starts
    status = train_all(cfg, planned)
    first, second = (status[p.name] for p in planned)
    assert first == "finished"
    assert second.startswith("failed (exit 2): error: --instance-dir") and "no such folder" in second


def test_the_learning_rate_is_refused_above_1(base_config, tmp_path, capsys):
    args = [
        "sweep",
        "--config",
        str(base_config),
        "--output-dir",
        str(tmp_path / "s"),
        "--vary",
        "learning-rate=1e-3,1e38",
    ]
    assert main(args) == 2
    assert "--learning-rate: must be > 0 and at most 1, got 1e+38" in capsys.readouterr().err


def test_evaluate_on_a_concepts_config_is_refused_before_anything_starts(base_config, tmp_path, capsys):
    data = yaml.safe_load(base_config.read_text())
    data = {k: v for k, v in data.items() if k not in ("instance_dir", "instance_prompt")}
    data["concepts"] = str(tmp_path / "concepts.yaml")
    base_config.write_text(yaml.safe_dump(data))
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(base_config), "--output-dir", str(out), "--vary", "rank=2,4", "--evaluate"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --evaluate:") and "several concepts" in line
    assert not out.exists()
