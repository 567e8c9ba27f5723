"""Everything a run needs before its first step: the accelerator, the models, the method's trainable
parameters and optimizer, the examples (cached latents and embeddings), a resumed state."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..data.examples import ExampleSet, TrainingData
from ..data.prior import class_images, generate_class_images, missing_class_indices
from ..errors import UserError
from ..methods import METHODS, Method, get_method
from ..models import Components, load_components
from ..optimizers import get_optimizer
from . import trackers
from .checkpoint import load_checkpoint, set_rng_state
from .preflight import Plan

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: TrainConfig
    accelerator: Any
    comps: Components
    method: Method
    data: TrainingData
    optimizer: Any
    lr_scheduler: Any
    denoiser: Any  # prepared (autocast / DDP) views of the trained models
    text_encoders: list  # the family's text encoders, prepared where they train
    start_step: int
    weight_dtype: torch.dtype
    objective: Any  # families.objectives: noising, target and loss weights
    ema: Any = None  # diffusers' EMAModel of the trained parameters, with --ema-decay

    @property
    def optimizer_unit(self):
        """The --optimizer (what it needs around training: schedule-free AdamW's evaluation weights)."""
        return get_optimizer(self.cfg)

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


def resolved(cfg: TrainConfig) -> TrainConfig:
    """The config with every implicit default made explicit, as written beside the run."""
    from ..models import denoiser_config, family_of, native_size, t5_length

    method_resolved = METHODS[cfg.method].resolve(cfg)
    cfg = family_of(cfg.model).resolve_options(method_resolved, denoiser_config(cfg.model) or {}, t5_length(cfg.model))
    return dataclasses.replace(
        cfg, resolution=cfg.resolution or native_size(cfg.model), lr_warmup_steps=cfg.warmup_steps
    )


def setup(cfg: TrainConfig, plan: Plan, progress: bool) -> Run:
    accelerator, weight_dtype = _accelerator(cfg)
    torch.manual_seed(cfg.seed)
    comps = _models(cfg, accelerator.device, weight_dtype)
    klasses = [
        _class_examples(cfg, cp.concept, 2 * i + 1, comps, progress, accelerator) if cp.concept.class_prompt else None
        for i, cp in enumerate(plan.concepts)
    ]
    method = get_method(cfg)
    torch.manual_seed(cfg.seed)  # adapter initialisation
    optimizer, lr_scheduler = _trainable(cfg, method, comps, accelerator)
    instances = [_instance_examples(cfg, cp, 2 * i, comps, method) for i, cp in enumerate(plan.concepts)]
    data = TrainingData(
        list(zip(instances, klasses)),
        resolution=cfg.resolution,
        flip=cfg.random_flip,
        random_crop=cfg.random_crop,
        seed=cfg.seed,
        family=comps.family,
    )
    if not cfg.no_cache:
        _cache(data, comps, method, progress)
    ema = None
    if cfg.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([p for g in optimizer.param_groups for p in g["params"]], decay=cfg.ema_decay)
    start = _resume(plan.resume_from, cfg, method, comps, ema, optimizer, lr_scheduler) if plan.resume_from else 0
    denoiser, text_encoders, optimizer = _prepare(accelerator, cfg, comps, method, optimizer)
    objective = comps.family.objective(comps.noise_scheduler, cfg)
    return Run(cfg, accelerator, comps, method, data, optimizer, lr_scheduler, denoiser, text_encoders, start,
               weight_dtype, objective, ema)  # fmt: skip


def _accelerator(cfg: TrainConfig):
    """accelerate's Accelerator for the run, and the dtype the frozen weights are kept in."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from .distributed import use_cpu

    # Accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (tests, sweeps, the UI) must start from its own. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=use_cpu(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        log_with=list(trackers.names(cfg.report_to)) or None,
        project_dir=str(Path(cfg.output_dir) / "logs"),
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    return accelerator, weight_dtype


def _models(cfg: TrainConfig, device, weight_dtype) -> Components:
    comps = load_components(cfg.model, weight_dtype, cfg.quantize_base)
    if cfg.zero_terminal_snr:
        comps.noise_scheduler = comps.family.training_scheduler(comps.noise_scheduler.config, zero_terminal_snr=True)
    for m in (comps.denoiser, comps.vae, *comps.text_encoders):
        m.to(device)
    if comps.family.upcast_vae and comps.vae.config.force_upcast:
        comps.vae.to(torch.float32)  # it overflows in fp16 (diffusers upcasts it too)
    return comps


def _trainable(cfg: TrainConfig, method: Method, comps: Components, accelerator):
    """What the method trains (sharded across the processes with --fsdp), with its optimizer and
    learning-rate schedule."""
    from diffusers.optimization import get_scheduler

    param_groups = method.prepare(comps)
    if cfg.gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
        if method.trains_text_encoder:
            for _, _, te in comps.trainable_encoders():  # (transformers 5 renamed it)
                enable = getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable
                enable()
    if cfg.fsdp:
        from . import sharding

        param_groups = sharding.shard(comps, param_groups, accelerator)
    unit = get_optimizer(cfg)
    optimizer = unit.build(param_groups)
    schedule, warmup = unit.schedule()
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=cfg.max_steps)
    return optimizer, lr_scheduler


def _cache(data: TrainingData, comps: Components, method: Method, progress: bool) -> None:
    """Latents once (and prompt embeddings, when the text encoders do not train); what is not needed
    again leaves the accelerator."""
    data.cache_latents(comps.vae, progress)
    comps.vae.to("cpu")
    if not method.trains_text_encoder:
        data.cache_embeddings(comps.text_encoders)
        for te in comps.text_encoders:
            te.to("cpu")


def _resume(path: Path, cfg: TrainConfig, method: Method, comps: Components, ema, optimizer, lr_scheduler) -> int:
    """Load a checkpoint's trained tensors, optimizer, schedule, EMA and random state; its step."""
    state = load_checkpoint(path)
    if cfg.fsdp:  # this process's shards of the trained tensors and their optimizer states
        from . import sharding

        sharding.load(comps, optimizer, path / sharding.SHARDED_DIR)
    else:
        method.load_state_dict(comps, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        if state["ema"] is None:
            raise UserError(f"--ema-decay: the checkpoint {path} was trained without it")
        ema.load_state_dict(state["ema"])
    lr_scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resuming from %s (step %d)", path, state["state"]["step"])
    return state["state"]["step"]


def _prepare(accelerator, cfg: TrainConfig, comps: Components, method: Method, optimizer) -> tuple:
    """(denoiser, text encoders, optimizer) as accelerate wraps what trains (with --fsdp: the sharded
    modules themselves, under autocast, and the optimizer)."""
    if cfg.fsdp:
        from . import sharding

        sharding.autocast(sharding.trained_modules(comps).values(), accelerator)
        return comps.denoiser, comps.text_encoders, accelerator.prepare(optimizer)
    if method.trains_text_encoder:
        names = [n for n, _, _ in comps.trainable_encoders()]
        denoiser, *trained, optimizer = accelerator.prepare(comps.denoiser, *[comps.parts[n] for n in names], optimizer)
        wrapped = dict(zip(names, trained))
        return denoiser, [wrapped.get(n, comps.parts[n]) for n in comps.family.text_encoders], optimizer
    denoiser, optimizer = accelerator.prepare(comps.denoiser, optimizer)
    return denoiser, comps.text_encoders, optimizer


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
    ids = _token_ids(cfg, comps, prompts)
    return ExampleSet(
        cp.paths,
        ids[0],
        stream=stream,
        targets=targets,
        more_ids=ids[1:],
        prompt_of=prompt_of,
        drawn_prompts=drawn,
        caption_dropout=cfg.caption_dropout,
        unmasked_weight=cfg.unmasked_weight if cfg.masked_loss else None,
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
        with acc.autocast():  # as validation samples: the VAE kept in fp32 decodes bf16/fp16 latents
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
    ids = _token_ids(cfg, comps, [concept.class_prompt])
    return ExampleSet(paths, ids[0], stream=stream, more_ids=ids[1:])


def _token_ids(cfg: TrainConfig, comps: Components, prompts: list[str]) -> list[torch.Tensor]:
    """The prompts' token ids (P, L), one tensor per tokenizer of the model's family."""
    rows = [comps.family.token_ids(comps.tokenizers, p, cfg.max_sequence_length) for p in prompts]
    return [torch.cat(per_tokenizer) for per_tokenizer in zip(*rows)]
