"""Training runs on the tiny model, through the same entry point as the CLI."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline

from dreambooth.errors import UserError
from dreambooth.training.loop import train
from helpers import lora_weights, max_abs_diff


@pytest.mark.parametrize("text_encoder", [False, True], ids=["unet", "unet+te"])
@pytest.mark.parametrize("prior", [False, True], ids=["no-prior", "prior"])
def test_two_steps_with_and_without_cache_train_the_same(make_cfg, class_dir, tmp_path, text_encoder, prior):
    kw = dict(train_text_encoder=text_encoder, text_encoder_lr=1e-3, random_flip=True)
    if prior:
        kw.update(class_prompt="a photo of a dog", class_dir=str(class_dir), num_class_images=4)
    cached = train(make_cfg(output_dir=str(tmp_path / "cached"), **kw), progress=False)
    uncached = train(make_cfg(output_dir=str(tmp_path / "uncached"), no_cache=True, **kw), progress=False)
    a, b = lora_weights(cached), lora_weights(uncached)
    assert any(k.startswith("text_encoder.") for k in a) == text_encoder
    # Same examples, same noise: caching changes where the VAE runs, not what is trained.
    assert max_abs_diff(a, b) < 1e-5
    rows = list(csv.DictReader(open(cached / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert (float(rows[0]["prior_loss"]) > 0) == prior


@pytest.mark.smoke
@pytest.mark.parametrize("text_encoder", [False, True], ids=["unet", "unet+te"])
def test_output_loads_in_stock_diffusers_and_changes_its_images(make_cfg, tiny_model, text_encoder):
    out = train(
        make_cfg(
            max_steps=3, train_text_encoder=text_encoder, text_encoder_lr=1e-2, learning_rate=1e-2, lora_alpha=8.0
        ),
        progress=False,
    )

    def images(pipe):
        g = torch.Generator().manual_seed(0)
        return pipe("a photo of sks dog", num_inference_steps=3, generator=g, output_type="np").images

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    before = images(pipe)
    pipe.load_lora_weights(out)  # the output folder, unchanged, as diffusers users do
    after = images(pipe)
    assert np.abs(after - before).max() > 1e-3
    te_lora = [n for n, _ in pipe.text_encoder.named_parameters() if "lora" in n]
    assert bool(te_lora) == text_encoder
    if text_encoder:  # the text-encoder part alone changes the image too
        pipe.set_adapters(pipe.get_active_adapters())
        pipe.unet.disable_adapters()
        te_only = images(pipe)
        assert np.abs(te_only - before).max() > 1e-4


def test_run_writes_resolved_config_log_and_checkpoints(make_cfg, tmp_path):
    out = train(
        make_cfg(max_steps=6, checkpoint_every=2, keep_checkpoints=2, lr_scheduler="linear", lr_warmup_steps=3),
        progress=False,
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["lr_warmup_steps"] == 3 and cfg["lora_alpha"] == 4.0 and cfg["rank"] == 4
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert list(rows[0]) == ["step", "loss", "instance_loss", "prior_loss", "lr", "seconds", "skipped",
                             "validation_loss", "validation_prior_loss"]  # fmt: skip
    lrs = [float(r["lr"]) for r in rows]
    # warmup really applied (0, 1/3, 2/3 of the peak), then linear decay over the remaining steps
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3])
    assert lrs[4] < lrs[3] and lrs[5] < lrs[4]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-4", "step-6"]  # --keep-checkpoints 2
    for name in ckpts:
        files = {p.name for p in (out / "checkpoints" / name).iterdir()}
        assert {
            "checkpoint_complete",
            "optimizer.safetensors",
            "optimizer.json",
            "scheduler.json",
            "rng.safetensors",
            "state.json",
            "pytorch_lora_weights.safetensors",
            "trainable.safetensors",
        } <= files
        assert not any(f.endswith((".pt", ".bin", ".pkl")) for f in files)  # no pickle anywhere


def _losses(out) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(open(out / "train_log.csv"))]


def _lora_b(w: dict) -> torch.Tensor:
    """The lora_B matrices, flattened: they start at zero, so they are what training changed."""
    return torch.cat([w[k].flatten() for k in sorted(w) if "lora_B" in k])


def _capture_run(monkeypatch) -> list:
    """The Run objects train() fits (to look at its models and optimizer after training)."""
    import dreambooth.training.loop as loop

    runs, real_fit = [], loop.fit
    monkeypatch.setattr(loop, "fit", lambda run, progress=True: runs.append(run) or real_fit(run, progress))
    return runs


def test_two_micro_batches_of_1_with_accumulation_train_what_one_batch_of_2_does(make_cfg, tmp_path):
    """What users rely on when they trade memory for steps: --batch-size 1 --gradient-accumulation 2 is one
    optimizer step on the same two examples, with the same noise, as --batch-size 2 (as 2 processes x batch 1
    are, tests/test_distributed.py). Floats differ only in summation order; the loss is logged to 6 digits.
    Adam's first updates are about lr x sign(gradient), so an element whose gradient is near zero can move by a
    fraction of lr on rounding alone: the weights are compared to a quarter of one step (lr/4), the lora_B
    matrices (the change from zero) to 1e-3 of their norm."""
    one = train(make_cfg(output_dir=str(tmp_path / "batch2"), batch_size=2), progress=False)
    acc = train(make_cfg(output_dir=str(tmp_path / "accum"), batch_size=1, gradient_accumulation=2), progress=False)
    assert _losses(acc) == pytest.approx(_losses(one), rel=1e-5)
    a, b = lora_weights(one), lora_weights(acc)
    assert max_abs_diff(a, b) <= 1e-3 / 4
    assert float((_lora_b(a) - _lora_b(b)).norm() / _lora_b(a).norm()) <= 1e-3


def test_gradient_checkpointing_trains_the_same_weights(make_cfg, tmp_path, monkeypatch):
    """Checkpointing recomputes activations in the backward pass instead of keeping them: the same maths, so the
    same weights. With LoRA dropout on the UNet and text encoder, the recomputation must also redraw the same
    dropout masks (torch restores the RNG state). Measured on the CPU: bit-equal weights and losses."""
    import torch.utils.checkpoint

    kw = dict(batch_size=2, train_text_encoder=True, text_encoder_lr=1e-3, lora_dropout=0.1)
    plain = train(make_cfg(output_dir=str(tmp_path / "plain"), **kw), progress=False)
    calls, real = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = _capture_run(monkeypatch)
    ckpt = train(make_cfg(output_dir=str(tmp_path / "ckpt"), gradient_checkpointing=True, **kw), progress=False)
    (run,) = runs
    assert run.comps.denoiser.is_gradient_checkpointing and calls  # it did recompute (diffusers' UNet blocks)
    assert any(getattr(m, "gradient_checkpointing", False) for m in run.comps.text_encoder.modules())
    a, b = lora_weights(plain), lora_weights(ckpt)
    assert any(k.startswith("text_encoder.") for k in a)
    assert _losses(ckpt) == pytest.approx(_losses(plain), rel=1e-6)
    assert max_abs_diff(a, b) <= 1e-6


def test_bf16_mixed_precision_trains_fp32_adapters_close_to_fp32_training(make_cfg, tmp_path, monkeypatch):
    """bf16 runs the frozen model in bf16 and keeps the trained LoRA parameters (and so Adam's updates of
    ~lr = 1e-3, below bf16's spacing of 2^-7 near 1) in fp32.

    Tolerances, measured over 2 steps at batch 2: the logged losses agree to bf16's unit roundoff 2^-8 = 3.9e-3
    (measured 3.0e-4 and 1.0e-3). The weights cannot agree that closely: Adam's first update of each element is
    about lr x sign(gradient), and elements whose gradient is within bf16 rounding of zero flip sign. The lora_B
    matrices (the change from zero) differ by 0.30 of their norm at most (measured 0.137, cosine 0.991); an
    unrelated update differs by ~1.4, a reversed one by 2."""
    fp32 = train(make_cfg(output_dir=str(tmp_path / "fp32"), batch_size=2), progress=False)
    runs = _capture_run(monkeypatch)
    bf16 = train(make_cfg(output_dir=str(tmp_path / "bf16"), batch_size=2, mixed_precision="bf16"), progress=False)
    (run,) = runs
    assert run.weight_dtype == torch.bfloat16 and run.comps.denoiser.conv_in.weight.dtype == torch.bfloat16  # frozen
    assert {p.dtype for p in run.trained} == {torch.float32}  # what the optimizer updates
    a, b = lora_weights(fp32), lora_weights(bf16)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in b.values())
    assert max_abs_diff(a, b) > 0  # it did run in bf16
    assert _losses(bf16) == pytest.approx(_losses(fp32), rel=2**-8)
    assert float((_lora_b(a) - _lora_b(b)).norm() / _lora_b(a).norm()) <= 0.3


def test_v_prediction_models_train_on_the_velocity(make_cfg, tmp_path, monkeypatch):
    """The tiny SD 2.x (`tiny-model --arch sd2`) predicts v: the loss target is the scheduler's velocity."""
    import dreambooth.families.objectives as step_module
    from dreambooth.cli import main

    vmodel = tmp_path / "vmodel"
    assert main(["tiny-model", str(vmodel), "--arch", "sd2"]) == 0
    unet = json.loads((vmodel / "unet" / "config.json").read_text())
    assert unet["use_linear_projection"] and unet["attention_head_dim"] == [4, 8]
    seen = []
    real = step_module.diffusion_target

    def spy(scheduler, latents, noise, timesteps):
        seen.append(scheduler.config.prediction_type)
        target = real(scheduler, latents, noise, timesteps)
        assert torch.allclose(target, scheduler.get_velocity(latents, noise, timesteps))
        return target

    monkeypatch.setattr(step_module, "diffusion_target", spy)
    out = train(make_cfg(model=str(vmodel), max_steps=2), progress=False)
    assert seen == ["v_prediction", "v_prediction"]
    assert all(torch.isfinite(t).all() for t in lora_weights(out).values())


def test_validation_images_at_the_right_steps_without_changing_training(make_cfg, tmp_path):
    kw = dict(max_steps=5, checkpoint_every=100, train_text_encoder=True, lora_dropout=0.1)
    plain = train(make_cfg(output_dir=str(tmp_path / "plain"), **kw), progress=False)
    out = train(
        make_cfg(
            output_dir=str(tmp_path / "val"),
            validation_prompt=["a photo of sks dog", "a sks dog"],
            validation_every=2,
            validation_seeds=[0, 7],
            validation_inference_steps=2,
            **kw,
        ),
        progress=False,
    )
    val = out / "validation"
    assert sorted(p.name for p in val.iterdir() if p.is_dir()) == ["step-0", "step-2", "step-4", "step-5"]
    assert sorted(p.name for p in (val / "step-4").iterdir()) == ["00-0.png", "00-7.png", "01-0.png", "01-7.png"]
    assert (val / "grid.png").exists()
    # rendering touches no random state of the training: the weights are the same as without it
    assert max_abs_diff(lora_weights(plain), lora_weights(out)) == 0


def test_validation_brings_back_only_what_caching_moved_off_the_gpu():
    """Found on the first GPU run: accelerate's device is "cuda" and a module on it reports "cuda:0";
    validation took the text encoders for moved-off and left them on the CPU, and every
    --train-text-encoder run with a validation prompt failed at its first step on a GPU."""
    from types import SimpleNamespace

    from dreambooth.training.validation import moved_off

    on_gpu, on_cpu = SimpleNamespace(device=torch.device("cuda:0")), SimpleNamespace(device=torch.device("cpu"))
    assert moved_off([on_gpu, on_cpu], torch.device("cuda")) == [on_cpu]
    assert moved_off([on_gpu, on_cpu], "cpu") == [on_gpu]


def test_every_run_gets_a_model_card_with_its_settings_and_how_to_load_it(make_cfg):
    from dreambooth.training.loop import train

    out = train(make_cfg(train_text_encoder=True, class_prompt=None), progress=False)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "instance_prompt: a photo of sks dog" in card
    assert "load_lora_weights" in card and "dreambooth export --lora" in card and "<lora:run:1>" in card
    assert "learning_rate: 0.001" in card  # the resolved config


def test_report_to_tensorboard_logs_losses_lr_and_validation_images(make_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dreambooth.training.loop import train

    cfg = make_cfg(
        max_steps=3,
        report_to="tensorboard",
        validation_prompt=["a photo of sks dog"],
        validation_every=3,
        validation_seeds=[0],
        validation_inference_steps=2,
        validation_loss_every=2,
    )
    out = train(cfg, progress=False)
    (events,) = list((out / "logs" / "train").glob("events.out.tfevents.*"))  # (hparams go to a subfolder)
    acc = EventAccumulator(str(events.parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/instance_loss", "train/lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("validation/loss")] == [2, 3]
    assert len(tags["images"]) == 1 and {e.step for e in acc.Images(tags["images"][0])} == {0, 3}


def test_zero_terminal_snr_trains_and_samples_on_the_rescaled_schedule(make_cfg, tmp_path, monkeypatch, capsys):
    """--zero-terminal-snr (Lin et al., 2024) on the tiny SD 2.x: training noises with a schedule whose
    last step holds no signal, generation samples it from that step; an epsilon model is refused."""
    import dreambooth.families.objectives as step_module
    from dreambooth.cli import main

    vmodel = tmp_path / "sd2"
    assert main(["tiny-model", str(vmodel), "--arch", "sd2"]) == 0
    terminal = []
    real = step_module.diffusion_target

    def spy(scheduler, latents, noise, timesteps):
        terminal.append(float(scheduler.alphas_cumprod[-1]))
        return real(scheduler, latents, noise, timesteps)

    monkeypatch.setattr(step_module, "diffusion_target", spy)
    out = train(
        make_cfg(model=str(vmodel), zero_terminal_snr=True, validation_prompt=["a photo of sks dog"]), progress=False
    )
    assert terminal and all(t < 1e-6 for t in terminal)  # SD's own schedule keeps 0.0047 at t=999
    assert yaml.safe_load((out / "config.yaml").read_text())["zero_terminal_snr"] is True

    gen = ["generate", "--model", str(vmodel), "--lora", str(out), "--prompt", "a photo of sks dog", "--steps", "3"]
    assert main([*gen, "--num-images", "1", "--output-dir", str(tmp_path / "g"), "--zero-terminal-snr"]) == 2
    assert "--scheduler dpm++2m-karras" in capsys.readouterr().err and not (tmp_path / "g").exists()
    args = [
        *gen,
        "--num-images",
        "1",
        "--zero-terminal-snr",
        "--scheduler",
        "ddim",
        "--output-dir",
        str(tmp_path / "g"),
    ]
    assert main(args) == 0
    (sidecar,) = (tmp_path / "g").glob("*.json")
    assert json.loads(sidecar.read_text())["zero_terminal_snr"] is True

    eps = make_cfg(zero_terminal_snr=True, output_dir=str(tmp_path / "eps"))
    with pytest.raises(UserError, match="--zero-terminal-snr: needs a v-prediction model"):
        train(eps, progress=False)
    assert not (tmp_path / "eps").exists()


def test_no_room_on_the_disk_is_refused_before_anything_starts(make_cfg, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from dreambooth.training.preflight import expected_bytes

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))  # 1 MB free
    out = tmp_path / "deep" / "run"
    with pytest.raises(UserError, match=r"--output-dir .*0\.0 GB free on its disk and the run needs about"):
        train(make_cfg(output_dir=str(out)), progress=False)
    assert not (tmp_path / "deep").exists()
    cfg = make_cfg(method="full", max_steps=1000, checkpoint_every=250, keep_checkpoints=2, rank=16)
    assert expected_bytes(cfg, 10**9) == 10**9 * (1 + 4 * 2) + 50_000_000


def test_validation_loss_is_the_same_measure_each_time_and_changes_nothing_else(make_cfg, class_dir, tmp_path):
    """--validation-loss-every: the loss on the photos and class images at fixed noise and timesteps,
    in train_log.csv at the due steps and the last; the training (losses, weights) is exactly what it is
    without it, and on the same weights it is the same number (here the weights of a run that stopped
    at step 4, continued)."""
    import dataclasses

    kw = dict(max_steps=6, learning_rate=1e-2, class_prompt="a photo of a dog", class_dir=str(class_dir),
              num_class_images=4, train_text_encoder=True, checkpoint_every=2)  # fmt: skip
    plain = train(make_cfg(output_dir=str(tmp_path / "plain"), **kw), progress=False)
    cfg = make_cfg(output_dir=str(tmp_path / "held"), validation_loss_every=2, **kw)
    held = train(cfg, progress=False)
    rows = list(csv.DictReader(open(held / "train_log.csv")))
    plain_rows = list(csv.DictReader(open(plain / "train_log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain_rows]
    assert max_abs_diff(lora_weights(held), lora_weights(plain)) == 0
    values = [(int(r["step"]), float(r["validation_loss"]), float(r["validation_prior_loss"]))
              for r in rows if r["validation_loss"]]  # fmt: skip
    assert [v[0] for v in values] == [2, 4, 6]
    assert values[-1][1] < values[0][1], values  # lr 1e-2: the photos' loss falls (measured 1.066 -> 1.014)
    from dreambooth.ui.projects import view
    from dreambooth.ui.tab_train import loss_plot

    shown = view(held)  # the web UI's plot of the run shows it beside the training loss
    assert [(s, f"{v:.6g}") for s, v in shown.validation_losses] == [(s, f"{v:.6g}") for s, v, _ in values]
    assert loss_plot(shown.losses, "loss", shown.validation_losses).size[0] > 100
    from dreambooth.training.loop import resolved, setup
    from dreambooth.training.preflight import preflight
    from dreambooth.training.validation_loss import validation_loss

    resumed = dataclasses.replace(cfg, max_steps=8, resume="latest")  # the step-6 checkpoint's weights, reloaded
    run = setup(resolved(resumed), preflight(resumed), progress=False)
    first = validation_loss(run)
    assert validation_loss(run) == first
    assert (f"{first[0]:.6g}", f"{first[1]:.6g}") == (rows[5]["validation_loss"], rows[5]["validation_prior_loss"])


def test_report_to_wandb_logs_offline_unless_logged_in(make_cfg, tmp_path, monkeypatch):
    """--report-to all: TensorBoard and Weights & Biases; this machine is not logged in to W&B, so the
    run is logged offline into OUTPUT/logs/wandb (nothing leaves the machine): its config, every step's
    losses and learning rate, the validation loss and the validation images, read back from W&B's run
    file by an independent reader (helpers.wandb_records)."""
    import json

    from helpers import wandb_records

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login
    cfg = make_cfg(max_steps=3, report_to="all", validation_prompt=["a photo of sks dog"], validation_every=3,
                   validation_seeds=[0], validation_inference_steps=2, validation_loss_every=1)  # fmt: skip
    out = train(cfg, progress=False)
    assert list((out / "logs" / "train").glob("events.out.tfevents.*"))  # TensorBoard's too
    (run_file,) = (out / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    config = {i.key: json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update}
    assert config["learning_rate"] == 1e-3 and config["max_steps"] == 3
    rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.HasField("history")]  # fmt: skip
    logged = csv.DictReader(open(out / "train_log.csv"))
    by_step = {row["_step"]: row for row in rows}
    for line in logged:
        step = int(line["step"])
        assert abs(by_step[step]["train/loss"] - float(line["loss"])) < 1e-5
        assert abs(by_step[step]["validation/loss"] - float(line["validation_loss"])) < 1e-5
    images = {row["_step"] for row in rows if "validation/00 a photo of sks dog/count" in row}
    assert images == {0, 3}
