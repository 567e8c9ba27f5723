"""A stopped and resumed run ends with the weights of an uninterrupted one."""

import csv

import pytest

import dreambooth.training.loop as loop
from dreambooth.training.loop import train
from helpers import lora_weights, max_abs_diff


class Crash(Exception):
    pass


def settings(class_dir):
    # Every source of randomness and state: flips, VAE sampling, text-encoder LoRA, prior
    # preservation, warmup + linear decay, gradient accumulation.
    return dict(
        max_steps=8,
        checkpoint_every=3,
        train_text_encoder=True,
        text_encoder_lr=1e-3,
        random_flip=True,
        class_prompt="a photo of a dog",
        class_dir=str(class_dir),
        num_class_images=4,
        lr_scheduler="linear",
        lr_warmup_steps=2,
        gradient_accumulation=2,
        lora_dropout=0.1,
    )


OPTIMIZER_SETTINGS = {  # each optimizer's state (Prodigy's step-size estimate, Adafactor's factored moments,
    # schedule-free AdamW's second sequence of weights) must come back exactly
    "adamw": {},
    "prodigy": dict(optimizer="prodigy", learning_rate=1.0, text_encoder_lr=1.0),
    "adafactor": dict(optimizer="adafactor"),
    "schedule-free-adamw": dict(optimizer="schedule-free-adamw", lr_scheduler="constant_with_warmup"),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZER_SETTINGS))
def test_stop_and_resume_equals_an_uninterrupted_run(make_cfg, class_dir, tmp_path, monkeypatch, optimizer):
    kw = settings(class_dir) | OPTIMIZER_SETTINGS[optimizer]
    straight = train(make_cfg(output_dir=str(tmp_path / "straight"), **kw), progress=False)

    real_step = loop.training_step

    def crash_at_step_5(run, step, micro):
        if step == 5:
            raise Crash()
        return real_step(run, step, micro)

    monkeypatch.setattr(loop, "training_step", crash_at_step_5)
    cfg = make_cfg(output_dir=str(tmp_path / "stopped"), **kw)
    with pytest.raises(Crash):
        train(cfg, progress=False)
    monkeypatch.setattr(loop, "training_step", real_step)
    assert not (tmp_path / "stopped" / "pytorch_lora_weights.safetensors").exists()
    resumed = train(make_cfg(output_dir=str(tmp_path / "stopped"), resume="latest", **kw), progress=False)

    assert max_abs_diff(lora_weights(straight), lora_weights(resumed)) <= 1e-6
    rows = list(csv.DictReader(open(resumed / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # rows 4-5 of the crashed run were replaced
    straight_rows = list(csv.DictReader(open(straight / "train_log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]


def test_a_finished_run_continues_to_more_steps(make_cfg, tmp_path):
    kw = dict(lr_scheduler="constant_with_warmup", lr_warmup_steps=2, checkpoint_every=100)
    longer = train(make_cfg(output_dir=str(tmp_path / "six"), max_steps=6, **kw), progress=False)
    short = train(make_cfg(output_dir=str(tmp_path / "four"), max_steps=4, **kw), progress=False)
    extended = train(make_cfg(output_dir=str(short), max_steps=6, resume="latest", **kw), progress=False)
    assert max_abs_diff(lora_weights(longer), lora_weights(extended)) <= 1e-6
    assert sorted(p.name for p in (extended / "checkpoints").iterdir()) == ["step-4", "step-6"]


def test_ctrl_c_saves_a_checkpoint_and_resuming_it_equals_an_uninterrupted_run(
    make_cfg, class_dir, tmp_path, monkeypatch, capsys
):
    import os
    import signal

    from dreambooth.errors import TrainingInterrupted

    straight = train(make_cfg(output_dir=str(tmp_path / "straight"), **settings(class_dir)), progress=False)
    real_step = loop.training_step
    # the default handler, or SIG_IGN where a shell started the tests in the background
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c_in_step_4(run, step, micro):
        if step == 3 and micro == 0:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step finishes, then the run stops
        return real_step(run, step, micro)

    monkeypatch.setattr(loop, "training_step", ctrl_c_in_step_4)
    with pytest.raises(TrainingInterrupted, match="stopped at step 4 of 8.*--resume latest"):
        train(make_cfg(output_dir=str(tmp_path / "stopped"), **settings(class_dir)), progress=False)
    monkeypatch.setattr(loop, "training_step", real_step)
    assert (tmp_path / "stopped" / "checkpoints" / "step-4").is_dir()  # not a multiple of checkpoint_every
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    resumed = train(
        make_cfg(output_dir=str(tmp_path / "stopped"), resume="latest", **settings(class_dir)), progress=False
    )
    assert max_abs_diff(lora_weights(straight), lora_weights(resumed)) <= 1e-6


def test_a_non_finite_loss_stops_the_run_or_is_skipped(make_cfg, tmp_path, monkeypatch):
    import torch

    from dreambooth.errors import UserError

    real_step = loop.training_step

    def nan_at_step_3(run, step, micro):
        loss, inst, prior = real_step(run, step, micro)
        if step == 2:
            return loss * float("nan"), inst, prior
        return loss, inst, prior

    monkeypatch.setattr(loop, "training_step", nan_at_step_3)
    cfg = make_cfg(output_dir=str(tmp_path / "stop"), max_steps=4, checkpoint_every=1)
    with pytest.raises(UserError, match=r"step 3: the loss is not finite.*checkpoints/step-2.*--skip-nonfinite"):
        train(cfg, progress=False)
    out = tmp_path / "stop"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert not (out / "pytorch_lora_weights.safetensors").exists()

    skip = train(make_cfg(output_dir=str(tmp_path / "skip"), max_steps=4, skip_nonfinite=True), progress=False)
    rows = list(csv.DictReader(open(skip / "train_log.csv")))
    assert [r["skipped"] for r in rows] == ["0", "0", "1", "0"]
    assert all(torch.isfinite(t).all() for t in lora_weights(skip).values())


def test_a_non_finite_gradient_is_caught_too(make_cfg, tmp_path, monkeypatch):
    import torch

    real_step = loop.training_step

    def nan_gradient_at_step_2(run, step, micro):
        loss, inst, prior = real_step(run, step, micro)
        if step == 1:  # finite value, NaN gradient: d sqrt(u)/du is infinite at 0, times du/dp = 0
            p = next(p for p in run.denoiser.parameters() if p.requires_grad)
            loss = loss + torch.sqrt((p * 0).pow(2).sum())
        return loss, inst, prior

    monkeypatch.setattr(loop, "training_step", nan_gradient_at_step_2)
    out = train(make_cfg(output_dir=str(tmp_path / "g"), max_steps=3, skip_nonfinite=True), progress=False)
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [r["skipped"] for r in rows] == ["0", "1", "0"]
    assert all(torch.isfinite(t).all() for t in lora_weights(out).values())


def test_checkpoint_state_round_trips_without_pickle():
    import torch

    from dreambooth.training.checkpoint import flatten_state, rng_state, unflatten_state

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2))], lr=1e-3)
    opt.param_groups[0]["params"][0].grad = torch.randn(3, 2)
    opt.step()
    for state in (opt.state_dict(), rng_state(), {"lr_lambdas": [None], "last_epoch": 4, "_last_lr": [0.1]}):
        tensors: dict = {}
        back = unflatten_state(flatten_state(state, tensors), tensors)
        a, b = repr(state).replace("tensor", ""), repr(back).replace("tensor", "")
        assert a == b
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"f": object()}, {})
