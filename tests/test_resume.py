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


def test_stop_and_resume_equals_an_uninterrupted_run(make_cfg, class_dir, tmp_path, monkeypatch):
    straight = train(make_cfg(output_dir=str(tmp_path / "straight"), **settings(class_dir)), progress=False)

    real_step = loop.training_step

    def crash_at_step_5(run, step, micro):
        if step == 5:
            raise Crash()
        return real_step(run, step, micro)

    monkeypatch.setattr(loop, "training_step", crash_at_step_5)
    cfg = make_cfg(output_dir=str(tmp_path / "stopped"), **settings(class_dir))
    with pytest.raises(Crash):
        train(cfg, progress=False)
    monkeypatch.setattr(loop, "training_step", real_step)
    assert not (tmp_path / "stopped" / "pytorch_lora_weights.safetensors").exists()
    resumed = train(
        make_cfg(output_dir=str(tmp_path / "stopped"), resume="latest", **settings(class_dir)), progress=False
    )

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
