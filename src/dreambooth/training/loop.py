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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..config import TrainConfig, to_yaml
from ..data.examples import ExampleSet, TrainingData, mix_seed, tokenize
from ..data.prior import class_images, generate_class_images, missing_class_indices
from ..errors import ProcessesFailed, SaveIncomplete, TrainingInterrupted, UserError
from ..methods import Method, get_method
from ..models import Components, load_components
from . import runlock, validation
from .checkpoint import (
    checkpoints_dir,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from .losses import diffusion_target, min_snr_weights, offset_noise, prior_preservation_loss
from .preflight import RUN_FILE, Plan, preflight

log = logging.getLogger(__name__)
LOG_COLUMNS = ("step", "loss", "instance_loss", "prior_loss", "lr", "seconds", "skipped")


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


@dataclass
class Run:
    cfg: TrainConfig
    accelerator: Any
    comps: Components
    method: Method
    data: TrainingData
    optimizer: Any
    lr_scheduler: Any
    unet: Any  # prepared (autocast / DDP) views of the trained models
    text_encoder: Any
    start_step: int
    weight_dtype: torch.dtype
    text_encoder_2: Any = None  # SDXL
    ema: Any = None  # diffusers' EMAModel of the trained parameters, with --ema-decay

    @property
    def trained(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def save_ema(self, folder: Path) -> list[Path]:
        """Write the EMA weights in the method's layout to folder, leaving the raw weights in place."""
        params = self.trained
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            return self.method.save(self.comps, folder)
        finally:
            self.ema.restore(params)

    @property
    def text_encoders(self) -> tuple:
        return (self.text_encoder, self.text_encoder_2)


def resolved(cfg: TrainConfig) -> TrainConfig:
    """The config with every implicit default made explicit, as written beside the run."""
    from ..methods.lora import init_shape
    from ..models import native_size

    if cfg.init_lora:  # the file's adapters decide their rank and alpha
        rank, alpha = init_shape(cfg.init_lora)
        cfg = dataclasses.replace(cfg, rank=rank, lora_alpha=alpha)
    return dataclasses.replace(
        cfg,
        resolution=cfg.resolution or native_size(cfg.model),
        lr_warmup_steps=cfg.warmup_steps,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else float(cfg.rank),
    )


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
    with runlock.hold(out) if main else contextlib.nullcontext():  # one run per folder
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
        if main:
            _finish(run, cfg, out)


def _finish(run: Run, cfg: TrainConfig, out: Path) -> None:
    """The final weights, run.json and the model card. What cannot be written is said (SaveIncomplete)
    after everything that can be is on disk: the run is finished either way, and its last checkpoint
    holds the trained tensors."""
    from ..card import write_card
    from .checkpoint import EMA_DIR, save_weights

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


def setup(cfg: TrainConfig, plan: Plan, progress: bool) -> Run:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from diffusers.optimization import get_scheduler

    # Accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (tests, sweeps, the UI) must start from its own. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    from .distributed import use_cpu

    accelerator = Accelerator(
        cpu=use_cpu(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        log_with="tensorboard" if cfg.report_to == "tensorboard" else None,
        project_dir=str(Path(cfg.output_dir) / "logs"),
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    torch.manual_seed(cfg.seed)
    comps = load_components(cfg.model, weight_dtype)
    if cfg.zero_terminal_snr:
        from diffusers import DDPMScheduler

        comps.noise_scheduler = DDPMScheduler.from_config(comps.noise_scheduler.config, rescale_betas_zero_snr=True)
    device = accelerator.device
    for m in (comps.unet, comps.vae, comps.text_encoder, comps.text_encoder_2):
        if m is not None:
            m.to(device)
    if comps.is_sdxl and comps.vae.config.force_upcast:
        comps.vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (diffusers upcasts it too)
    klasses = [
        _class_examples(cfg, cp.concept, 2 * i + 1, comps, progress, accelerator) if cp.concept.class_prompt else None
        for i, cp in enumerate(plan.concepts)
    ]
    method = get_method(cfg)
    torch.manual_seed(cfg.seed)  # adapter initialisation
    param_groups = method.prepare(comps)
    if cfg.gradient_checkpointing:
        comps.unet.enable_gradient_checkpointing()
        if method.trains_text_encoder:
            for te in (comps.text_encoder, comps.text_encoder_2):
                if te is not None:
                    te.gradient_checkpointing_enable()
    optimizer = _optimizer(cfg, param_groups)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )
    instances = [_instance_examples(cfg, cp, 2 * i, comps, method) for i, cp in enumerate(plan.concepts)]
    data = TrainingData(
        list(zip(instances, klasses)),
        resolution=cfg.resolution,
        flip=cfg.random_flip,
        random_crop=cfg.random_crop,
        seed=cfg.seed,
    )
    if not cfg.no_cache:
        data.cache_latents(comps.vae, progress)
        comps.vae.to("cpu")  # the VAE is not needed again: it leaves the accelerator
        if not method.trains_text_encoder:
            data.cache_embeddings((comps.text_encoder, comps.text_encoder_2))
            for te in (comps.text_encoder, comps.text_encoder_2):
                if te is not None:
                    te.to("cpu")
    ema = None
    if cfg.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([p for g in optimizer.param_groups for p in g["params"]], decay=cfg.ema_decay)
    start = 0
    if plan.resume_from is not None:
        state = load_checkpoint(plan.resume_from)
        method.load_state_dict(comps, state["trainable"])
        if ema is not None:
            if state["ema"] is None:
                raise UserError(f"--ema-decay: the checkpoint {plan.resume_from} was trained without it")
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = state["state"]["step"]
        log.info("resuming from %s (step %d)", plan.resume_from, start)
    text_encoder_2 = comps.text_encoder_2
    if method.trains_text_encoder and comps.is_sdxl:
        unet, text_encoder, text_encoder_2, optimizer = accelerator.prepare(
            comps.unet, comps.text_encoder, comps.text_encoder_2, optimizer
        )
    elif method.trains_text_encoder:
        unet, text_encoder, optimizer = accelerator.prepare(comps.unet, comps.text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(comps.unet, optimizer)
        text_encoder = comps.text_encoder
    return Run(
        cfg,
        accelerator,
        comps,
        method,
        data,
        optimizer,
        lr_scheduler,
        unet,
        text_encoder,
        start,
        weight_dtype,
        text_encoder_2,
        ema,
    )


def _instance_examples(cfg: TrainConfig, cp, stream: int, comps: Components, method) -> ExampleSet:
    """A concept's photos with their prompts: the method's (one, or TI's templates), or per-image captions."""
    prompts, prompt_of = method.instance_prompts() if not cfg.concepts else [cp.concept.instance_prompt], None
    if cp.captions is not None:  # one prompt per photo
        prompts = list(dict.fromkeys(cp.captions))
        prompt_of = [prompts.index(c) for c in cp.captions]
        n = sum(c != cp.concept.instance_prompt for c in cp.captions)
        log.info("%s: training with %d per-image captions", cp.concept.instance_dir, n)
    prompts = [method.rewrite_prompt(p) for p in prompts]
    drawn = len(prompts)
    if cfg.caption_dropout > 0:
        prompts = [*prompts, ""]  # the empty prompt, of dropped captions
    targets = None
    if cfg.buckets:
        from ..data.buckets import bucket_sizes, nearest_bucket
        from ..data.images import load_rgb
        from ..models import size_step

        buckets = bucket_sizes(cfg.resolution, size_step(cfg.model))
        targets = [nearest_bucket(load_rgb(p).size, buckets) for p in cp.paths]
        log.info("buckets: %s", ", ".join(f"{w}x{h}: {targets.count((w, h))}" for w, h in sorted(set(targets))))
    return ExampleSet(
        cp.paths,
        torch.cat([tokenize(comps.tokenizer, p) for p in prompts]),
        stream=stream,
        targets=targets,
        prompt_ids_2=torch.cat([tokenize(comps.tokenizer_2, p) for p in prompts]) if comps.is_sdxl else None,
        prompt_of=prompt_of,
        drawn_prompts=drawn,
        caption_dropout=cfg.caption_dropout,
    )


def shard(items: list, rank: int, world: int) -> list:
    """This process's share of items (every world-th from rank): the shares are disjoint and cover all."""
    return items[rank::world]


def _class_examples(cfg: TrainConfig, concept, stream: int, comps: Components, progress: bool, acc) -> ExampleSet:
    """A concept's class images (generated first where missing, split across processes), with its class prompt."""
    missing = missing_class_indices(concept.class_dir, concept.num_class_images)
    acc.wait_for_everyone()  # every process has listed the folder before any writes to it
    if missing:
        log.info(
            "generating %d class images for %r in %s%s",
            len(missing),
            concept.class_prompt,
            concept.class_dir,
            f", split across {acc.num_processes} processes" if acc.num_processes > 1 else "",
        )
        generate_class_images(
            comps.pipeline,
            concept.class_prompt,
            concept.class_dir,
            shard(missing, acc.process_index, acc.num_processes),
            seed=cfg.seed,
            steps=cfg.class_inference_steps,
            guidance=cfg.class_guidance,
            batch_size=cfg.class_batch_size,
            resolution=cfg.resolution,
            progress=progress,
        )
    acc.wait_for_everyone()
    paths = class_images(concept.class_dir, concept.num_class_images)
    ids_2 = tokenize(comps.tokenizer_2, concept.class_prompt) if comps.is_sdxl else None
    return ExampleSet(paths, tokenize(comps.tokenizer, concept.class_prompt), stream=stream, prompt_ids_2=ids_2)


def _optimizer(cfg: TrainConfig, groups: list[dict]):
    kw = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.adam_8bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


def training_step(run: Run, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro-batch: instance (+ class) examples -> noisy latents -> UNet -> DreamBooth loss.

    Instance and class examples draw from generators of their own, so the instance half of a step is
    the same with or without prior preservation.
    """
    cfg, data = run.cfg, run.data
    world = run.accelerator.num_processes
    sets, turn = data.sets_of_micro_batch(step * cfg.gradient_accumulation + micro)
    k = turn * cfg.batch_size * world  # the global batch's first example (of its concept)
    parts = [_noised(run, s, k, torch.Generator().manual_seed(mix_seed(cfg.seed, step, micro, s.stream))) for s in sets]
    if len({p[0].shape for p in parts}) > 1:  # a bucket's photos beside square class images: one pass each
        (inst, _, _), (klass, _, _) = (_losses(run, [p]) for p in parts)
        return inst + cfg.prior_loss_weight * klass, inst, klass
    return _losses(run, parts, cfg.prior_loss_weight)


def _losses(run: Run, parts: list, prior_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet on the parts' examples in one batch; the DreamBooth loss of the first part (instance)
    and the rest (class)."""
    cfg = run.cfg
    noisy, timesteps, emb, target = (torch.cat(t) for t in list(zip(*parts))[:4])  # (B or 2B, ...)
    added = None
    if parts[0][4] is not None:  # SDXL: pooled text embeddings and micro-conditioning sizes
        added = {k: torch.cat([p[4][k] for p in parts]).to(run.weight_dtype) for k in parts[0][4]}
    pred = run.unet(noisy.to(run.weight_dtype), timesteps, emb.to(run.weight_dtype), added_cond_kwargs=added).sample
    weights = None
    if cfg.snr_gamma is not None:
        from diffusers.training_utils import compute_snr

        sched = run.comps.noise_scheduler
        weights = min_snr_weights(compute_snr(sched, timesteps), cfg.snr_gamma, sched.config.prediction_type)
    return prior_preservation_loss(pred, target, parts[0][0].shape[0], prior_weight, weights)


def _noised(run: Run, s: ExampleSet, k: int, g: torch.Generator):
    """This process's slice of examples k.. of set s (the global batch: batch size x processes) with
    noise added at random timesteps (Ho et al., 2020, eq. 4). The random numbers of the whole global
    batch are drawn, so the split across processes changes nothing."""
    comps, device, n, acc = run.comps, run.accelerator.device, run.cfg.batch_size, run.accelerator
    total, part = n * acc.num_processes, (acc.process_index * n, (acc.process_index + 1) * n)
    latents, emb, added = run.data.batch(s, k, total, g, comps.vae, run.text_encoders, device, part)  # (n, 4, h, w)
    noise = torch.randn((total, *latents.shape[1:]), generator=g)[part[0] : part[1]].to(device)
    timesteps = torch.randint(0, comps.noise_scheduler.config.num_train_timesteps, (total,), generator=g)
    timesteps = timesteps[part[0] : part[1]].to(device)
    if run.cfg.noise_offset:  # (drawn after the rest: without it, a step's random numbers are unchanged)
        noise = offset_noise(noise, run.cfg.noise_offset, g, rows=(part[0], total))
    source = noise
    if run.cfg.input_perturbation:  # the input is made from perturbed noise, the target from the noise
        fresh = torch.randn((total, *latents.shape[1:]), generator=g)[part[0] : part[1]].to(device)
        source = noise + run.cfg.input_perturbation * fresh
    noisy = comps.noise_scheduler.add_noise(latents, source, timesteps)
    return noisy, timesteps, emb, diffusion_target(comps.noise_scheduler, latents, noise, timesteps), added


def fit(run: Run, progress: bool = True) -> None:
    from tqdm.auto import tqdm

    cfg, acc = run.cfg, run.accelerator
    main = acc.is_main_process
    out = Path(cfg.output_dir)
    log_file = _open_log(out / "train_log.csv", run.start_step) if main else None
    trained = [p for g in run.optimizer.param_groups for p in g["params"]]
    tes = [te for te in run.text_encoders if te is not None] if run.method.trains_text_encoder else []
    models = [run.unet, *tes]
    for m in models:
        m.train()
    if cfg.report_to != "none":
        hparams = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers("train", config=hparams)
    if main and run.start_step == 0 and validation.due(cfg, 0):
        validation.render(run, 0)  # the base model's images, to compare against
    bar = tqdm(
        total=cfg.max_steps, initial=run.start_step, desc="training", unit="step", disable=not progress, mininterval=1.0
    )
    step_time = None
    skipped = 0
    with _StopRequest() as stop:
        for step in range(run.start_step, cfg.max_steps):
            t0 = time.perf_counter()
            totals, fault = _optimizer_step(run, step, models, trained)
            run.lr_scheduler.step()
            done = step + 1
            stopping = stop.signal is not None
            if acc.num_processes > 1:  # the losses of the global batch; a stop asked of any process stops all
                shared = torch.cat([totals[:3], torch.tensor([float(stopping)])]).to(acc.device)
                shared = acc.reduce(shared, reduction="sum").cpu()
                totals[:3], stopping = shared[:3] / acc.num_processes, bool(shared[3] > 0)
            if fault:
                if not cfg.skip_nonfinite:
                    last = list_checkpoints(out)
                    kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was saved yet"
                    raise UserError(
                        f"step {done}: the {fault} is not finite; training stopped and wrote nothing new ({kept}); "
                        "lower --learning-rate, or pass --skip-nonfinite to skip such steps"
                    )
                skipped += 1
                log.warning("step %d: the %s is not finite; step skipped (%d so far)", done, fault, skipped)
            lr = totals[3].item()
            dt = time.perf_counter() - t0
            row = [done, *(f"{v:.6g}" for v in totals[:3].tolist()), f"{lr:.6g}", f"{dt:.4f}", int(bool(fault))]
            if log_file is not None:
                log_file.write(",".join(map(str, row)) + "\n")
                log_file.flush()
            if cfg.report_to != "none":
                names = ("loss", "instance_loss", "prior_loss")
                acc.log({**{f"train/{k}": v for k, v in zip(names, totals[:3].tolist())}, "train/lr": lr}, step=done)
            step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
            bar.set_postfix_str(f"loss={totals[0]:.4f} lr={lr:.2e} s/step={step_time:.2f}")
            bar.update(1)
            saved = done % cfg.checkpoint_every == 0 or done == cfg.max_steps
            path = checkpoints_dir(out) / f"step-{done}"
            if (saved or stopping) and main:
                extra = {"max_steps": cfg.max_steps, "num_processes": acc.num_processes}
                save_checkpoint(
                    out,
                    done,
                    run.method,
                    run.comps,
                    run.optimizer,
                    run.lr_scheduler,
                    extra,
                    ema=run.ema,
                    ema_save=run.save_ema if run.ema is not None else None,
                )
                prune_checkpoints(out, cfg.keep_checkpoints)
            if stopping and done < cfg.max_steps:
                acc.wait_for_everyone()  # the checkpoint is on disk before any process exits
                bar.close()
                if log_file is not None:
                    log_file.close()
                raise TrainingInterrupted(
                    f"stopped at step {done} of {cfg.max_steps}; checkpoint {path}; continue with the same command "
                    "and --resume latest"
                )
            if main and validation.due(cfg, done):
                validation.render(run, done)
    bar.close()
    if log_file is not None:
        log_file.close()
    if main:
        validation.write_grid(cfg)
    if cfg.report_to != "none":
        acc.end_training()


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
                norm = acc.clip_grad_norm_(trained, max_norm)
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


__all__ = ["train", "setup", "fit", "training_step", "checkpoints_dir"]
