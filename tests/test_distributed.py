"""Training on several processes (issue 8): gloo on the CPU, through the same code GPUs use.

Two processes with batch 1 each must train what one process with batch 2 trains: the same examples,
noise and timesteps (each process draws the global batch's random numbers and keeps its slice), with
gradients averaged by DDP. Floats differ only in summation order: after 4 Adam steps at lr 1e-3 the
LoRA weights (of magnitude ~1) agree to 2e-5 (measured: 3e-6)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import dog_class_images, lora_weights, max_abs_diff

TOL = 2e-5


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return env


def _args(model, instance_dir, out, class_dir, *extra) -> list[str]:
    return [
        *("train", "--model", str(model), "--instance-dir", str(instance_dir)),
        *("--instance-prompt", "a photo of sks dog", "--class-prompt", "a photo of a dog"),
        *("--class-dir", str(class_dir), "--num-class-images", "5", "--class-inference-steps", "2"),
        *("--output-dir", str(out), "--resolution", "64", "--rank", "4"),
        *("--learning-rate", "1e-3", "--lr-scheduler", "constant", "--checkpoint-every", "2"),
        *extra,
    ]


def _refused(capsys, *args) -> str:
    """The command's one-line refusal (exit code 2), run in this process: refused before any process starts."""
    from dreambooth.cli import main

    capsys.readouterr()
    assert main(_args(*args)) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _train(model, instance_dir, out, class_dir, *extra, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "dreambooth", *_args(model, instance_dir, out, class_dir, *extra)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _losses(out) -> list[list[float]]:
    rows = (Path(out) / "train_log.csv").read_text().splitlines()[1:]
    return [[float(v) for v in r.split(",")[1:4]] for r in rows]


def test_shards_are_disjoint_and_cover_everything():
    from dreambooth.training.setup import shard

    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and sum(len(p) for p in parts) == len(items)


@pytest.fixture(scope="module")
def two_process_run(tiny_model, tmp_path_factory):
    from dreambooth.demo import example_subject

    root = tmp_path_factory.mktemp("ddp")
    proc = _train(
        tiny_model, example_subject(), root / "run2", root / "class", "--max-steps", "4", "--num-processes", "2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_two_processes_of_batch_1_train_what_one_process_of_batch_2_does(two_process_run, tiny_model):
    from dreambooth.demo import example_subject

    root, proc = two_process_run
    assert proc.stdout.strip().splitlines() == [str(root / "run2")]  # printed once, by the launching command
    assert "split across 2 processes" in proc.stderr
    one = _train(tiny_model, example_subject(), root / "run1", root / "class", "--max-steps", "4", "--batch-size", "2")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "generating" not in one.stderr  # it trained on the class images the two processes made
    assert np.allclose(_losses(root / "run1"), _losses(root / "run2"), atol=1e-5)
    assert max_abs_diff(lora_weights(root / "run1"), lora_weights(root / "run2")) <= TOL


def test_class_images_are_split_across_processes_without_duplicates(two_process_run, tiny_model):

    root, _ = two_process_run
    names = sorted(p.name for p in (root / "class").iterdir())
    assert names == [f"class-{i:05d}.png" for i in range(5)]  # each index written once, none missing
    alone = root / "class-alone"  # what one process makes: the same images (image i from seed + i)
    dog_class_images(tiny_model, alone, range(5))
    for name in names:
        a = np.asarray(Image.open(root / "class" / name), dtype=np.int16)
        b = np.asarray(Image.open(alone / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name  # batch composition moves a float, rarely a pixel level


def test_resume_needs_the_same_number_of_processes_and_then_equals_an_uninterrupted_run(
    two_process_run, tiny_model, tmp_path, capsys
):

    from dreambooth.demo import example_subject

    root, _ = two_process_run
    out = tmp_path / "run"  # the 2-process run as it was when killed after its step-2 checkpoint
    shutil.copytree(root / "run2", out)
    shutil.rmtree(out / "checkpoints" / "step-4")
    for name in ("run.json", "pytorch_lora_weights.safetensors"):
        (out / name).unlink()
    wrong = _refused(capsys, tiny_model, example_subject(), out, root / "class", "--max-steps", "4", "--resume",
                     "latest", "--num-processes", "1")  # fmt: skip
    assert wrong.startswith("error: --num-processes 1: the checkpoint"), wrong
    # without --num-processes the run's saved config says 2
    again = _train(tiny_model, example_subject(), out, root / "class", "--max-steps", "4", "--resume", "latest")
    assert again.returncode == 0, again.stderr[-3000:]
    assert max_abs_diff(lora_weights(out), lora_weights(root / "run2")) <= TOL


def test_ctrl_c_stops_every_process_at_one_step_with_a_checkpoint(two_process_run, tiny_model, tmp_path):
    from dreambooth.demo import example_subject

    root, _ = two_process_run
    out = tmp_path / "run"
    args = [
        *(
            "--model",
            str(tiny_model),
            "--instance-dir",
            str(example_subject()),
            "--instance-prompt",
            "a photo of sks dog",
        ),
        *("--class-prompt", "a photo of a dog", "--class-dir", str(root / "class"), "--num-class-images", "5"),
        *("--output-dir", str(out), "--resolution", "64", "--rank", "4", "--max-steps", "100000"),
        *("--checkpoint-every", "100000", "--num-processes", "2"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreambooth", "train", *args], env=_env(), stderr=subprocess.PIPE, text=True
    )
    log = out / "train_log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: stopped at step" in err and err.count("interrupted:") == 1
    from dreambooth.runs import list_checkpoints
    from dreambooth.training.checkpoint import load_checkpoint

    ((step, path),) = list_checkpoints(out)
    assert load_checkpoint(path)["state"] == {"step": step, "max_steps": 100000, "num_processes": 2}
    assert len(log.read_text().splitlines()) == step + 1  # the log's rows: exactly the steps taken


def test_a_process_killed_by_a_signal_ends_the_command_with_128_plus_its_number(tiny_model, tmp_path, monkeypatch):
    """As a shell reports it (137 for SIGKILL, 134 for an abort), not a negative number wrapped to 247."""
    from dreambooth.cli import main
    from dreambooth.demo import example_subject
    from dreambooth.training import distributed

    monkeypatch.setattr(distributed, "launch", lambda args, n, grace_s=60.0: -signal.SIGKILL)
    args = ["train", "--model", str(tiny_model), "--instance-dir", str(example_subject())]
    args += ["--instance-prompt", "a photo of sks dog", "--output-dir", str(tmp_path / "run"), "--num-processes", "2"]
    assert main(args) == 128 + signal.SIGKILL


# --fsdp (issue 20): torch's FSDP2 on 2 gloo processes, as on GPUs.


@pytest.fixture(scope="module")
def fsdp_run(two_process_run, tiny_model):
    """The DDP run's settings with --fsdp (LoRA on the UNet and the text encoder, a validation image)."""
    from dreambooth.demo import example_subject

    root, _ = two_process_run
    extra = ["--num-processes", "2", "--fsdp", "--train-text-encoder", "--validation-prompt", "a photo of sks dog",
             "--validation-inference-steps", "2"]  # fmt: skip
    proc = _train(tiny_model, example_subject(), root / "fsdp", root / "class", "--max-steps", "4", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = _train(tiny_model, example_subject(), root / "ddp-te", root / "class", "--max-steps", "4",
                 *[a for a in extra if a != "--fsdp"])  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return root, extra


def test_fsdp_trains_what_ddp_trains_with_sharded_checkpoints_and_one_ordinary_lora_file(fsdp_run):
    """Each process holds half of every trained tensor and its Adam moments; the losses, the LoRA file
    (written whole by the main process, as without FSDP) and the validation images are DDP's."""
    import json

    root, _ = fsdp_run
    assert np.allclose(_losses(root / "fsdp"), _losses(root / "ddp-te"), atol=1e-5)
    ours, ddp = lora_weights(root / "fsdp"), lora_weights(root / "ddp-te")
    assert ours.keys() == ddp.keys() and any(k.startswith("text_encoder.") for k in ours)
    assert max_abs_diff(ours, ddp) <= TOL
    step2 = root / "fsdp" / "checkpoints" / "step-2"
    shards = sorted(p.name for p in (step2 / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], shards  # one file per process
    assert not (step2 / "optimizer.json").exists()
    assert json.loads((step2 / "state.json").read_text())["fsdp"] is True
    step4 = root / "fsdp" / "checkpoints" / "step-4"
    assert max_abs_diff(lora_weights(step4), lora_weights(root / "fsdp")) == 0  # a checkpoint's file is whole
    assert sorted(p.name for p in (root / "fsdp" / "validation" / "step-4").iterdir()) == ["00-0.png", "00-1.png"]


def test_fsdp_resumes_exactly_from_its_sharded_checkpoint_and_not_without_fsdp(fsdp_run, tiny_model, capsys):
    from dreambooth.demo import example_subject

    root, extra = fsdp_run
    out = root / "fsdp-again"  # a copy of the run, continued from its step-2 checkpoint to 4
    shutil.copytree(root / "fsdp", out)
    step2 = str(out / "checkpoints" / "step-2")
    wrong = _refused(capsys, tiny_model, example_subject(), out, root / "class", "--max-steps", "4", "--resume",
                     step2, *[a for a in extra if a != "--fsdp"], "--no-fsdp")  # fmt: skip
    assert wrong.startswith("error: --fsdp: the checkpoint"), wrong
    # without --fsdp the run's saved config says it
    again = _train(tiny_model, example_subject(), out, root / "class", "--max-steps", "4", "--resume", step2,
                   *[a for a in extra if a != "--fsdp"])  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert _losses(out) == _losses(root / "fsdp")
    assert max_abs_diff(lora_weights(out), lora_weights(root / "fsdp")) == 0  # exactly the uninterrupted run


def test_fsdp_full_fine_tuning_saves_one_ordinary_model(tiny_model, tmp_path):
    """The whole UNet sharded (the case FSDP is for: a model that does not fit one GPU); the final model
    is the diffusers folder one process of batch 2 writes, to float rounding (fp32)."""
    from diffusers import UNet2DConditionModel

    from dreambooth.demo import example_subject

    args = ["--method", "full", "--learning-rate", "1e-4", "--max-steps", "3"]
    runs = {}
    for name, extra in (("fsdp", ["--num-processes", "2", "--fsdp"]), ("one", ["--batch-size", "2"])):
        proc = subprocess.run(
            [sys.executable, "-m", "dreambooth", "train", "--model", str(tiny_model), "--instance-dir",
             str(example_subject()), "--instance-prompt", "a photo of sks dog", "--output-dir", str(tmp_path / name),
             "--resolution", "64", "--lr-scheduler", "constant", "--checkpoint-every", "2", *args, *extra],
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = UNet2DConditionModel.from_pretrained(tmp_path / name, subfolder="unet").state_dict()
    base = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").state_dict()
    fsdp, one = runs["fsdp"], runs["one"]
    assert fsdp.keys() == one.keys()

    def norm(a, b):
        return sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a) ** 0.5

    # Adam's first steps move every weight by about lr whatever its gradient's size, so a weight whose
    # gradient is ~0 may move either way: the whole update is compared (FSDP against DDP: 6e-6 of it differs)
    assert norm(fsdp, one) <= 1e-3 * norm(one, base), (norm(fsdp, one), norm(one, base))


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--num-processes", "1"], "--num-processes"),
        (["--method", "textual-inversion", "--token", "<sks>", "--initializer-token", "dog"], "--method"),
        (["--ema-decay", "0.99"], "--ema-decay"),
        (["--quantize-base", "int8"], "--quantize-base"),
        (["--optimizer", "prodigy"], "--optimizer prodigy"),
    ],
)
def test_what_fsdp_cannot_shard_is_one_line_before_anything_starts(tiny_model, tmp_path, capsys, flags, named):
    from dreambooth.cli import main
    from dreambooth.demo import example_subject

    args = ["train", "--model", str(tiny_model), "--instance-dir", str(example_subject()), "--instance-prompt",
            "a photo of sks dog", "--output-dir", str(tmp_path / "run"), "--fsdp", "--num-processes", "2", *flags]  # fmt: skip
    if "--method" in flags:
        args[args.index("--instance-prompt") + 1] = "a photo of <sks> dog"
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {named}") and "--fsdp" in err[0], err
    assert not (tmp_path / "run").exists()
