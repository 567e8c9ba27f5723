"""The one training loop, for every method: setup, then fit.

Every random draw of step s (which examples, flips, VAE sample, noise, timesteps) comes from a
generator seeded with (seed, s, micro-batch), so a resumed run sees exactly the batches an
uninterrupted run sees, and cached and uncached runs train on the same examples.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from .. import io, runs
from ..config import TrainConfig
from ..errors import ProcessesFailed, SaveIncomplete, TrainingInterrupted, UserError
from ..options import to_yaml
from ..runs import EMA_DIR, RUN_FILE, checkpoints_dir, list_checkpoints
from . import trackers, validation
from .checkpoint import prune_checkpoints, save_checkpoint
from .preflight import Plan, preflight
from .setup import Run, resolved, setup
from .sharding import full_tensor
from .step import training_step

log = logging.getLogger(__name__)
LOG_COLUMNS = (
    "step", "loss", "instance_loss", "prior_loss", "lr", "seconds", "skipped", "validation_loss",
    "validation_prior_loss",
)  # fmt: skip


class _StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step (a second Ctrl-C
    stops at once); installed only on the main thread, and put back afterwards."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        if self.signal is not None:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("stopping after this step (a checkpoint is saved); press Ctrl-C again to stop at once")

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train as configured; returns the output folder. Raises UserError on bad input, before loading.

    With cfg.num_processes > 1 (and not already in a process group) it starts that many processes of
    itself (distributed.launch_train); in a group, every process trains its slice of each global
    batch and the main process alone writes files."""
    from . import distributed

    if cfg.num_processes > 1 and not distributed.in_group():
        code = distributed.launch_train(cfg)
        if code:
            raise ProcessesFailed(code)
        return Path(cfg.output_dir)
    group = distributed.state()
    if group.num_processes != cfg.num_processes:  # started by accelerate launch or torchrun
        cfg = dataclasses.replace(cfg, num_processes=group.num_processes)
    plan = preflight(cfg)
    group.wait_for_everyone()  # every process has read the folder before the main one changes it
    out = Path(cfg.output_dir)
    incomplete = None
    try:
        _train(cfg, plan, group, out, progress and group.is_main_process)
    except TrainingInterrupted:  # a stop every process agreed on: none is left in a collective
        group.destroy_process_group()
        raise
    except SaveIncomplete as e:  # the main process's files; the others still wait for it below
        incomplete = e
    group.wait_for_everyone()
    # Without this, gloo's threads may outlive the interpreter and abort the process at exit.
    group.destroy_process_group()
    if incomplete is not None:
        raise incomplete
    return out


def _train(cfg: TrainConfig, plan: Plan, group, out: Path, progress: bool) -> None:
    main = group.is_main_process
    with runs.hold(out) if main else contextlib.nullcontext():  # one run per folder
        cfg = resolved(cfg)
        if main:
            if plan.clear_previous:
                for name in ("checkpoints", RUN_FILE, "train_log.csv"):
                    p = out / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            out.mkdir(parents=True, exist_ok=True)
            io.write_text(out / "config.yaml", to_yaml(cfg))
            # Until the final weights are written, the run is not finished (also when it continues one that was).
            io.write_text(out / RUN_FILE, json.dumps({"status": "training", "max_steps": cfg.max_steps}, indent=2))
        group.wait_for_everyone()
        run = setup(cfg, plan, progress)
        fit(run, progress)
        # with --fsdp every process gathers the trained tensors onto the main one
        with _whole(run), run.optimizer_unit.evaluating(run.optimizer):
            if main:
                _finish(run, cfg, out)


def _whole(run: Run):
    """With --fsdp, a context in which the main process holds every trained tensor whole (every process
    takes part); without, nothing to do."""
    if not run.cfg.fsdp:
        return contextlib.nullcontext()
    from . import sharding

    return sharding.gathered(run.comps, run.accelerator.is_main_process)


def _finish(run: Run, cfg: TrainConfig, out: Path) -> None:
    """The final weights, run.json and the model card. What cannot be written is said (SaveIncomplete)
    after everything that can be is on disk: the run is finished either way, and its last checkpoint
    holds the trained tensors."""
    from ..card import write_card
    from .checkpoint import save_weights

    files, unsaved = save_weights(run.method.save, run.comps, out)
    if run.ema is not None:
        ema_files, ema_unsaved = save_weights(lambda _, folder: run.save_ema(folder), run.comps, out / EMA_DIR)
        files, unsaved = files + ema_files, unsaved + [f"{EMA_DIR}/{p}" for p in ema_unsaved]
    status = {
        "status": "finished",
        "step": cfg.max_steps,
        "method": cfg.method,
        "files": [Path(f).relative_to(out).as_posix() for f in files],
    }
    if unsaved:
        status["unsaved"] = unsaved
    io.write_text(out / RUN_FILE, json.dumps(status, indent=2))
    write_card(out)
    if unsaved:
        last = checkpoints_dir(out) / f"step-{cfg.max_steps}"
        raise SaveIncomplete(
            f"training finished, but could not write {'; '.join(unsaved)}; "
            + (f"written: {', '.join(status['files'])}; " if files else "")
            + f"the trained weights are also in {last}"
        )
    log.info("finished: %s", ", ".join(str(f) for f in files))


def fit(run: Run, progress: bool = True) -> None:
    """Train from run.start_step to max_steps: a logged optimizer step at a time, checkpoints and
    validation images when due; Ctrl-C (any process's) stops every process after the same step."""
    cfg, acc = run.cfg, run.accelerator
    trained = run.trained
    models = [run.denoiser, *(run.text_encoders if run.method.trains_text_encoder else [])]
    for m in models:
        m.train()
    run.optimizer_unit.start(run.optimizer)
    if cfg.report_to != "none":
        hparams = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers("train", config=hparams, init_kwargs=trackers.init_kwargs(cfg.report_to, cfg.output_dir))
    renders = acc.is_main_process or cfg.fsdp  # a sharded model's forward takes every process
    if renders and run.start_step == 0 and validation.due(cfg, 0):
        with run.optimizer_unit.evaluating(run.optimizer):
            validation.render(run, 0)  # the base model's images, to compare against
    steps = _StepLog(run, progress)
    with _StopRequest() as stop, steps:
        for step in range(run.start_step, cfg.max_steps):
            t0 = time.perf_counter()
            totals, fault = _optimizer_step(run, step, models, trained)
            run.lr_scheduler.step()
            totals, stopping = _agreed(acc, totals, stop.signal is not None)
            if fault:
                steps.skip(step + 1, fault)
            steps.write(step + 1, totals, time.perf_counter() - t0, fault, _validation_loss(run, step + 1))
            _checkpoint(run, step + 1, stopping)
            if renders and validation.due(cfg, step + 1):
                with run.optimizer_unit.evaluating(run.optimizer):
                    validation.render(run, step + 1)
    if acc.is_main_process:
        validation.write_grid(cfg)
    if cfg.report_to != "none":
        acc.end_training()


def _validation_loss(run: Run, done: int) -> tuple[float, float | None] | None:
    """--validation-loss-every: (photos, class images) when due, on the weights that would be saved; every
    process computes it (a sharded model's forward takes them all; the others' cost is a few forwards)."""
    every = run.cfg.validation_loss_every
    if not every or (done % every and done != run.cfg.max_steps):
        return None
    from .validation_loss import validation_loss

    with run.optimizer_unit.evaluating(run.optimizer):
        return validation_loss(run)


def _agreed(acc, totals: torch.Tensor, stopping: bool) -> tuple[torch.Tensor, bool]:
    """With several processes: the global batch's losses, and a stop asked of any process stops all."""
    if acc.num_processes == 1:
        return totals, stopping
    shared = torch.cat([totals[:3], torch.tensor([float(stopping)])]).to(acc.device)
    shared = acc.reduce(shared, reduction="sum").cpu()
    totals[:3] = shared[:3] / acc.num_processes
    return totals, bool(shared[3] > 0)


def _checkpoint(run: Run, done: int, stopping: bool) -> None:
    """Save a checkpoint when one is due or a stop was asked; on a stop, end training (the same step
    in every process)."""
    cfg, acc = run.cfg, run.accelerator
    out = Path(cfg.output_dir)
    path = checkpoints_dir(out) / f"step-{done}"
    due = done % cfg.checkpoint_every == 0 or done == cfg.max_steps or stopping
    extra = {"max_steps": cfg.max_steps, "num_processes": acc.num_processes, **({"fsdp": True} if cfg.fsdp else {})}
    if due and cfg.fsdp:  # every process writes its shards, then the main one the rest, whole
        from . import sharding

        staging = checkpoints_dir(out) / f".step-{done}.sharded"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.parent.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        sharding.save(run.comps, run.optimizer, staging)
        with sharding.gathered(run.comps, acc.is_main_process):
            if acc.is_main_process:
                save_checkpoint(out, done, run.method, run.comps, run.optimizer, run.lr_scheduler, extra,
                                sharded=staging)  # fmt: skip
                prune_checkpoints(out, cfg.keep_checkpoints)
        acc.wait_for_everyone()
    elif due and acc.is_main_process:
        save_checkpoint(out, done, run.method, run.comps, run.optimizer, run.lr_scheduler, extra, ema=run.ema,
                        ema_save=run.save_ema if run.ema is not None else None,
                        evaluating=lambda: run.optimizer_unit.evaluating(run.optimizer))  # fmt: skip
        prune_checkpoints(out, cfg.keep_checkpoints)
    if stopping and done < cfg.max_steps:
        acc.wait_for_everyone()  # the checkpoint is on disk before any process exits
        raise TrainingInterrupted(
            f"stopped at step {done} of {cfg.max_steps}; checkpoint {path}; continue with the same command "
            "and --resume latest"
        )


class _StepLog:
    """Each step's losses, learning rate and time: train_log.csv (main process), TensorBoard, the bar."""

    def __init__(self, run: Run, progress: bool):
        from tqdm.auto import tqdm

        self.cfg, self.acc = run.cfg, run.accelerator
        out = Path(self.cfg.output_dir)
        self.file = _open_log(out / "train_log.csv", run.start_step) if self.acc.is_main_process else None
        self.bar = tqdm(total=self.cfg.max_steps, initial=run.start_step, desc="training", unit="step",
                        disable=not progress, mininterval=1.0)  # fmt: skip
        self.step_time: float | None = None
        self.skipped = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        if self.file is not None:
            self.file.close()
        return False

    def skip(self, done: int, fault: str) -> None:
        """A non-finite step: stop (naming the last good checkpoint), or with --skip-nonfinite count it."""
        if not self.cfg.skip_nonfinite:
            last = list_checkpoints(self.cfg.output_dir)
            kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was saved yet"
            raise UserError(
                f"step {done}: the {fault} is not finite; training stopped and wrote nothing new ({kept}); "
                "lower --learning-rate, or pass --skip-nonfinite to skip such steps"
            )
        self.skipped += 1
        log.warning("step %d: the %s is not finite; step skipped (%d so far)", done, fault, self.skipped)

    def write(self, done: int, totals: torch.Tensor, dt: float, fault: str | None, held=None) -> None:
        lr = totals[3].item()
        row = [done, *(f"{v:.6g}" for v in totals[:3].tolist()), f"{lr:.6g}", f"{dt:.4f}", int(bool(fault))]
        row += ["" if v is None else f"{v:.6g}" for v in (held or (None, None))]
        if self.file is not None:
            self.file.write(",".join(map(str, row)) + "\n")
            self.file.flush()
        if self.cfg.report_to != "none":
            names = ("loss", "instance_loss", "prior_loss")
            self.acc.log({**{f"train/{k}": v for k, v in zip(names, totals[:3].tolist())}, "train/lr": lr}, step=done)
            if held is not None:
                self.acc.log({f"validation/{k}": v for k, v in zip(("loss", "prior_loss"), held) if v is not None},
                             step=done)  # fmt: skip
        self.step_time = dt if self.step_time is None else 0.9 * self.step_time + 0.1 * dt
        self.bar.set_postfix_str(f"loss={totals[0]:.4f} lr={lr:.2e} s/step={self.step_time:.2f}")
        self.bar.update(1)


def _optimizer_step(run: Run, step: int, models: list, trained: list) -> tuple[torch.Tensor, str | None]:
    """One optimizer step over the micro-batches: (loss, instance loss, prior loss, lr), and what was not
    finite ("loss" or "gradient"), in which case the weights are left as they were."""
    cfg, acc = run.cfg, run.accelerator
    totals = torch.zeros(4)
    totals[3] = run.lr_scheduler.get_last_lr()[0]
    fault = None
    for micro in range(cfg.gradient_accumulation):
        with acc.accumulate(*models):
            loss, inst, prior = training_step(run, step, micro)
            bad = not torch.isfinite(loss.detach()).all()
            if acc.num_processes > 1:  # all processes skip the backward pass together, or none does
                bad = acc.reduce(torch.tensor([float(bad)], device=acc.device), reduction="sum").item() > 0
            if bad:
                fault = fault or "loss"
            else:
                acc.backward(loss)
            if acc.sync_gradients:
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
                norm = full_tensor(acc.clip_grad_norm_(trained, max_norm))  # (--fsdp: a DTensor)
                if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
                    fault = fault or "gradient"
                if fault:
                    run.optimizer.zero_grad(set_to_none=True)
                else:
                    run.optimizer.step()
                    run.optimizer.zero_grad(set_to_none=True)
                    run.method.after_step(run.comps)
                    if run.ema is not None:
                        run.ema.step(trained)
        totals[:3] += (
            torch.stack([loss.detach(), inst.detach(), prior.detach()]).float().cpu() / cfg.gradient_accumulation
        )
    return totals, fault


def _open_log(path: Path, start_step: int):
    """The CSV log, cut back to the resumed step (rows past it belong to a run that was not kept)."""
    rows = []
    if start_step > 0 and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].isdigit() and int(r[0]) <= start_step]
    io.write_text(path, ",".join(LOG_COLUMNS) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return open(path, "a", encoding="utf-8")


__all__ = ["train", "setup", "resolved", "fit", "training_step"]
