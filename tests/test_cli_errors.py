"""Bad input: one line naming the input and the problem, exit code 2, no model loaded, nothing lost."""

import json
import subprocess
import sys

import pytest

import dreambooth.models
from dreambooth.cli import main


@pytest.fixture
def finished_run(tmp_path):
    out = tmp_path / "finished"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "finished", "step": 10}))
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"precious weights")
    (out / "config.yaml").write_text("rank: 4\n")
    return out


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(dreambooth.models, "load_pipeline", refuse)


def bad_cases(tiny_model, instance_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00.jpg").write_bytes((instance_dir / "00.jpg").read_bytes())
    (broken / "01.jpg").write_text("not an image")
    not_model = tmp_path / "not_model"
    not_model.mkdir()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rat: 0.1\n")
    return {
        "missing instance dir": (["--instance-dir", str(tmp_path / "nope")], "--instance-dir"),
        "empty instance dir": (["--instance-dir", str(empty)], "--instance-dir"),
        "unreadable image": (["--instance-dir", str(broken)], "01.jpg"),
        "unknown model path": (["--model", str(tmp_path / "no" / "model")], "--model"),
        "folder that is no model": (["--model", str(not_model)], "model_index.json"),
        "class prompt without class dir": (["--class-prompt", "a photo of a dog"], "--class-dir"),
        "rank 0": (["--rank", "0"], "--rank"),
        "learning rate 0": (["--learning-rate", "0"], "--learning-rate"),
        "negative learning rate": (["--learning-rate=-1e-4"], "--learning-rate"),
        "resolution not divisible by 8": (["--resolution", "65"], "--resolution"),
        "unknown scheduler": (["--lr-scheduler", "cosine_restarts_forever"], "--lr-scheduler"),
        "warmup with constant": (["--lr-scheduler", "constant", "--lr-warmup-steps", "500"], "--lr-warmup-steps"),
        "not a number": (["--max-steps", "lots"], "--max-steps"),
        "unknown flag": (["--learning-rat", "1e-4"], "--learning-rat"),
        "resume a folder that is no checkpoint": (["--resume", str(not_model)], "--resume"),
        "fp16 without a GPU": (["--mixed-precision", "fp16"], "--mixed-precision"),
        "8-bit Adam without a GPU": (["--adam-8bit"], "--adam-8bit"),
        "config file with a typo": (["--config", str(bad_yaml)], "learning_rat"),
        "unknown optimizer": (["--optimizer", "lion"], "--optimizer"),
        "8-bit Adam and another optimizer": (["--adam-8bit", "--optimizer", "prodigy"], "--adam-8bit"),
        "another optimizer's option": (["--prodigy-d-coef", "2"], "--prodigy-d-coef"),
        "schedule-free with a schedule": (
            ["--optimizer", "schedule-free-adamw", "--lr-scheduler", "cosine"],
            "--lr-scheduler",
        ),  # fmt: skip
    }


CASES = [
    "missing instance dir",
    "empty instance dir",
    "unreadable image",
    "unknown model path",
    "folder that is no model",
    "class prompt without class dir",
    "rank 0",
    "learning rate 0",
    "negative learning rate",
    "resolution not divisible by 8",
    "unknown scheduler",
    "warmup with constant",
    "not a number",
    "unknown flag",
    "resume a folder that is no checkpoint",
    "fp16 without a GPU",
    "8-bit Adam without a GPU",
    "config file with a typo",
    "unknown optimizer",
    "8-bit Adam and another optimizer",
    "another optimizer's option",
    "schedule-free with a schedule",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_lost(case, tiny_model, instance_dir, tmp_path, finished_run, capsys):
    args, named = bad_cases(tiny_model, instance_dir, tmp_path)[case]
    before = snapshot(finished_run)
    base = [
        "train",
        "--model",
        str(tiny_model),
        "--instance-dir",
        str(instance_dir),
        "--instance-prompt",
        "a photo of sks dog",
        "--output-dir",
        str(finished_run),
        "--overwrite",
        "--max-steps",
        "1000",
    ]
    rc = main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and named in err, err
    assert snapshot(finished_run) == before


def test_a_finished_run_is_not_overwritten_without_consent(tiny_model, instance_dir, finished_run, capsys):
    before = snapshot(finished_run)
    rc = main(
        [
            "train",
            "--model",
            str(tiny_model),
            "--instance-dir",
            str(instance_dir),
            "--instance-prompt",
            "a photo of sks dog",
            "--output-dir",
            str(finished_run),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "finished run" in err and "--overwrite" in err
    assert snapshot(finished_run) == before


def test_a_missing_required_flag_is_named(capsys):
    assert main(["train", "--instance-dir", "x", "--instance-prompt", "p", "--output-dir", "o"]) == 2
    assert capsys.readouterr().err.strip() == "error: --model: required (as a flag or as 'model' in the config file)"


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreambooth",
            "train",
            "--model",
            "m",
            "--instance-dir",
            str(tmp_path),
            "--instance-prompt",
            "p",
            "--output-dir",
            str(tmp_path / "o"),
            "--rank",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --rank: must be at least 1, got 0"
