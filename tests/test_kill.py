"""SIGKILL at any moment loses nothing (issue 8): the trainer is killed in a forked process at nine moments
(class-image generation, latent caching, mid-step, inside checkpoint saves, the final save, the run
record), then `--resume latest` finishes with the weights of an uninterrupted run, and every
checkpoint left on disk loads."""

from __future__ import annotations

import multiprocessing
import signal

import pytest

from dreambooth.demo import example_subject
from helpers import kill_at, lora_weights, max_abs_diff


def _killed(moment: str, args: list[str]) -> int:
    """Run the CLI in a process forked from a server that has imported torch, diffusers and the trainer
    once (no start-up of seconds for each moment; the server never computed, so its fork is safe with
    OpenMP), at this process's thread count, with one function wrapped to SIGKILL it (kill_at); its exit
    code (-9: killed by SIGKILL; its output is the forkserver's, not this test's)."""
    import torch

    global _SERVER
    if _SERVER is None:
        _SERVER = multiprocessing.get_context("forkserver")
        _SERVER.set_forkserver_preload(["torch", "diffusers", "dreambooth.cli", "dreambooth.training.loop"])
    proc = _SERVER.Process(target=kill_at, args=(moment, args, torch.get_num_threads()))
    proc.start()
    proc.join()
    return proc.exitcode


_SERVER = None


def _args(model, out, class_dir):
    return [
        "train", "--model", str(model), "--instance-dir", str(example_subject()),
        "--instance-prompt", "a photo of sks dog", "--class-prompt", "a photo of a dog",
        "--class-dir", str(class_dir), "--num-class-images", "3", "--class-inference-steps", "2",
        "--class-batch-size", "1", "--resolution", "64", "--max-steps", "6", "--checkpoint-every", "2",
        "--rank", "4", "--learning-rate", "1e-2", "--lr-scheduler", "linear", "--lr-warmup-steps", "1",
        "--train-text-encoder", "--text-encoder-lr", "1e-2", "--output-dir", str(out),
    ]  # fmt: skip


MOMENTS = [  # the N-th atomic write of this run: 1 config.yaml, 2 run.json, 3-5 class images,
    # 6 train_log.csv, 7-17 checkpoint step-2, 18-28 step-4, 29-39 step-6, 40 final weights, 41 run.json, 42 card
    "dreambooth.io:_fsync:1",  # writing config.yaml
    "dreambooth.io:_fsync:4",  # writing the second class image
    "dreambooth.data.examples:TrainingData._encode:2",  # caching latents
    "dreambooth.io:_fsync:9",  # inside the first checkpoint
    "dreambooth.training.checkpoint:prune_checkpoints:1",  # right after the first checkpoint
    "dreambooth.training.loop:training_step:5",  # inside step 5
    "dreambooth.io:_fsync:35",  # inside the last checkpoint
    "dreambooth.io:_fsync:40",  # writing the final weights
    "dreambooth.io:_fsync:41",  # writing the finished run record
]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    from dreambooth.cli import main

    d = tmp_path_factory.mktemp("straight")
    assert main(_args(tiny_model, d / "run", d / "class")) == 0
    return d / "run"


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_then_resume_latest_equals_an_uninterrupted_run(moment, tiny_model, uninterrupted, tmp_path):
    from dreambooth.cli import main
    from dreambooth.runs import list_checkpoints
    from dreambooth.training.checkpoint import load_checkpoint

    out, class_dir = tmp_path / "run", tmp_path / "class"
    code = _killed(moment, _args(tiny_model, out, class_dir))
    assert code == -signal.SIGKILL, (moment, code)
    for _, ckpt in list_checkpoints(out):
        load_checkpoint(ckpt)  # every checkpoint left on disk loads
    assert main([*_args(tiny_model, out, class_dir), "--resume", "latest"]) == 0
    assert max_abs_diff(lora_weights(uninterrupted), lora_weights(out)) <= 1e-6, moment
    from dreambooth.data.images import inspect_image, list_images

    images = list_images(class_dir)  # a torn write is a hidden .tmp file, never listed as an image
    assert len(images) == 3 and all(inspect_image(p).status == "ok" for p in images)


OPTIMIZERS = {  # (issue 21) each optimizer's state through a SIGKILL inside step 5 and --resume latest
    "prodigy": ["--optimizer", "prodigy", "--learning-rate", "1.0", "--text-encoder-lr", "1.0"],
    "adafactor": ["--optimizer", "adafactor"],
    "schedule-free-adamw": ["--optimizer", "schedule-free-adamw", "--lr-scheduler", "constant_with_warmup"],
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_sigkill_inside_a_step_then_resume_equals_an_uninterrupted_run_for_every_optimizer(
    optimizer, tiny_model, tmp_path
):
    from dreambooth.cli import main

    extra = OPTIMIZERS[optimizer]
    straight = tmp_path / "straight"
    assert main([*_args(tiny_model, straight, tmp_path / "class"), *extra]) == 0
    out = tmp_path / "run"
    args = [*_args(tiny_model, out, tmp_path / "class"), *extra]
    code = _killed("dreambooth.training.loop:training_step:5", args)
    assert code == -signal.SIGKILL, (optimizer, code)
    assert main([*args, "--resume", "latest"]) == 0
    assert max_abs_diff(lora_weights(straight), lora_weights(out)) <= 1e-6, optimizer
