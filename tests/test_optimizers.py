"""--optimizer (issue 21): each optimizer does what it is chosen for, on the tiny model. (That each
resumes exactly is test_resume's; bad names and mixed options are test_cli_errors'.)"""

from __future__ import annotations

import logging

import torch

from dreambooth.training.checkpoint import load_checkpoint
from dreambooth.training.loop import train
from helpers import lora_weights, max_abs_diff


def _run(make_cfg, tmp_path, name, steps=6, **kw):
    cfg = make_cfg(output_dir=str(tmp_path / name), max_steps=steps, checkpoint_every=steps, train_text_encoder=True,
                   **kw)  # fmt: skip
    return train(cfg, progress=False)


def _state_bytes(state) -> int:
    tensors = [t for per in state["state"].values() for t in per.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors if t.dim() > 0)


def test_prodigy_estimates_its_own_step_size_and_warns_of_a_learning_rate_meant_for_adam(make_cfg, tmp_path, caplog):
    """Its learning rate multiplies the step size D it estimates, which starts at 1e-6 and grows while
    the gradients agree; the text encoder's rate follows --learning-rate (both 1.0)."""
    from dreambooth.training.preflight import preflight

    run = _run(make_cfg, tmp_path, "prodigy", 40, optimizer="prodigy", learning_rate=1.0, text_encoder_lr=None)
    groups = load_checkpoint(run / "checkpoints" / "step-40")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1.0, 1.0]
    # the estimate grows once the weights have moved (measured: 1e-6 until step 25, 1.13e-6 at 30, 1.72e-6 at 40)
    assert groups[0]["d"] > 1.3 * groups[0]["d0"], groups[0]
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora_weights(run).items())
    caplog.set_level(logging.WARNING)
    preflight(make_cfg(output_dir=str(tmp_path / "low"), optimizer="prodigy", learning_rate=1e-4))
    lines = [r.getMessage() for r in caplog.records if "prodigy" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("--learning-rate 0.0001 with --optimizer prodigy"), lines


def test_adafactor_keeps_a_fraction_of_adams_state(make_cfg, tmp_path):
    """Its second moment is a row and a column per matrix, and it keeps no first moment."""
    adam = _run(make_cfg, tmp_path, "adamw")
    factored = _run(make_cfg, tmp_path, "adafactor", optimizer="adafactor")
    sizes = [_state_bytes(load_checkpoint(r / "checkpoints" / "step-6")["optimizer"]) for r in (adam, factored)]
    assert sizes[1] < 0.25 * sizes[0], sizes
    assert max_abs_diff(lora_weights(factored), lora_weights(adam)) > 0  # it trained, differently


def test_schedule_free_adamw_saves_its_averaged_weights_and_resumes_from_its_training_ones(make_cfg, tmp_path):
    """It trains one sequence of weights (y) and evaluates their average (x): the LoRA file, in a
    checkpoint and at the end, holds x; the checkpoint's trainable tensors, from which a run resumes,
    hold y."""
    run = _run(make_cfg, tmp_path, "sf", optimizer="schedule-free-adamw")
    saved = lora_weights(run)
    ckpt = run / "checkpoints" / "step-6"
    # (switching to x and back to y rounds y by ~1e-10 each time, as the library does it)
    assert max_abs_diff(lora_weights(ckpt), saved) <= 1e-8
    trainable = load_checkpoint(ckpt)["trainable"]
    y = {k.removeprefix("unet."): v for k, v in trainable.items() if k.startswith("unet.")}
    x = {k.removeprefix("unet."): v for k, v in saved.items() if k.startswith("unet.")}
    common = [k for k in x if k.replace(".weight", ".default.weight") in y]
    assert common and max(float((x[k] - y[k.replace(".weight", ".default.weight")]).abs().max()) for k in common) > 0
