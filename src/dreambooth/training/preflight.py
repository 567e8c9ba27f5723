"""Everything about a training run that can be wrong is checked here, before any model is loaded."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .. import runs
from ..config import TrainConfig
from ..data.concepts import Concept, concepts_of
from ..data.images import instance_images
from ..data.prior import check_class_dir
from ..errors import UserError
from ..methods import METHODS, get_method
from ..models import check_model
from ..optimizers import OPTIMIZERS, get_optimizer
from ..options import flag_name
from ..runs import checkpoint_step, is_checkpoint, list_checkpoints, run_status

log = logging.getLogger(__name__)


@dataclass
class ConceptPlan:
    concept: Concept
    paths: list[Path]
    captions: list[str] | None  # each photo's prompt, from its caption file (None: no captions)


@dataclass
class Plan:
    concepts: list[ConceptPlan]  # one, unless --concepts
    resume_from: Path | None
    clear_previous: bool  # --overwrite of an earlier run

    @property
    def instance_paths(self) -> list[Path]:
        return self.concepts[0].paths

    @property
    def captions(self) -> list[str] | None:
        return self.concepts[0].captions


def preflight(cfg: TrainConfig) -> Plan:
    cfg.validate()
    check_model(cfg.model, config=cfg.model_config, allow_pickle=cfg.allow_pickle)
    from ..models import denoiser_config, family_of

    family = family_of(cfg.model)
    for key, why in family.training_options_refused(cfg, denoiser_config(cfg.model) or {}):
        raise UserError(f"--{flag_name(key)}: {why}, and --model {cfg.model} is {family.label}")
    if cfg.zero_terminal_snr:
        _check_v_prediction(cfg.model)
    from ..quantize import check as check_quantize

    check_quantize(cfg.quantize_base)
    get_method(cfg).check()
    concepts = [_concept_plan(cfg, c, i) for i, c in enumerate(concepts_of(cfg), start=1)]
    _check_hardware(cfg)
    _check_fsdp(cfg)
    if cfg.buckets and cfg.num_processes > 1 and any(c.concept.class_prompt for c in concepts):
        raise UserError(
            "--buckets: with prior preservation on several processes not yet supported (a bucket's photos and "
            "the square class images take two UNet passes, which DDP does not synchronise); use one process"
        )
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: is a file, not a folder")
    if (info := runs.holder(out)) is not None:
        raise UserError(runs.busy_message(out, info))
    _check_room(cfg, out)
    status = run_status(out)
    resume_from = None
    if cfg.resume is not None:
        if cfg.overwrite:
            raise UserError(
                "--overwrite: cannot be combined with --resume (one continues the run, the other replaces it)"
            )
        resume_from = _resume_path(cfg, out)
    elif status is not None and not cfg.overwrite:
        what = "a finished run" if status == "finished" else "an unfinished run (with checkpoints)"
        raise UserError(
            f"--output-dir {out}: holds {what}; pass --resume latest to continue it or --overwrite to replace it"
        )
    return Plan(concepts, resume_from, clear_previous=cfg.overwrite and status is not None)


def _concept_plan(cfg: TrainConfig, c: Concept, i: int) -> ConceptPlan:
    """One concept's photos and captions, checked; errors name the concept with --concepts."""
    from ..data.captions import instance_captions

    try:
        paths = instance_images(c.instance_dir, skip_bad=cfg.skip_bad_images)
        captions = None
        method = get_method(cfg)
        if method.uses_captions:
            identifier, prompt = method.caption_terms(c)
            captions = instance_captions(paths, prompt, identifier, cfg.caption_identifier)
        if c.class_dir is not None:
            check_class_dir(c.class_dir)
    except UserError as e:
        if cfg.concepts:
            raise UserError(f"--concepts {cfg.concepts}: concept {i}: {e}") from None
        raise
    if cfg.masked_loss:
        from ..data.masks import load_mask

        try:
            found = [p for p in paths if load_mask(p) is not None]
        except UserError as e:
            raise UserError(f"--masked-loss: {e}") from None
        if not found:
            raise UserError(
                f"--masked-loss: no photo in {c.instance_dir} has a mask (photo.mask.png beside photo.jpg, or an "
                "alpha channel)"
            )
        log.info("--masked-loss: %d of %d photos masked (the others weigh fully)", len(found), len(paths))
    return ConceptPlan(c, paths, captions)


def _check_v_prediction(model: str) -> None:
    """Zero terminal SNR leaves no signal at the last step: a model predicting the noise learns nothing
    there (the target is the input), so it needs one that predicts v (Lin et al., 2024, section 3.2)."""
    from diffusers import DDPMScheduler

    from ..models import resolve

    try:
        kind = DDPMScheduler.load_config(resolve(model), subfolder="scheduler").get("prediction_type", "epsilon")
    except (OSError, ValueError):
        return  # not readable here; loading the model reports it
    if kind != "v_prediction":
        raise UserError(
            f"--zero-terminal-snr: needs a v-prediction model (SD 2.x), and --model {model} predicts {kind}"
        )


def _resume_path(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume == "latest":
        found = list_checkpoints(out)
        if not found:  # stopped before its first checkpoint: start over (as diffusers' scripts do)
            log.info("--resume latest: no complete checkpoint under %s yet; starting from step 0", out / "checkpoints")
            return None
        path = found[-1][1]
    else:
        path = Path(cfg.resume)
        if not is_checkpoint(path):
            raise UserError(f"--resume {cfg.resume}: not a complete checkpoint folder (no checkpoint_complete marker)")
    step = checkpoint_step(path)
    state = json.loads((path / "state.json").read_text())
    if bool(state.get("fsdp", False)) != cfg.fsdp:
        raise UserError(
            f"--fsdp: the checkpoint {path} was trained {'with' if state.get('fsdp') else 'without'} it; "
            f"resume it {'with' if state.get('fsdp') else 'without'} --fsdp (its optimizer states are "
            f"{'in shards' if state.get('fsdp') else 'whole'})"
        )
    trained_on = int(state.get("num_processes", 1))
    if trained_on != cfg.num_processes:
        raise UserError(
            f"--num-processes {cfg.num_processes}: the checkpoint {path} was trained on {trained_on} process(es); "
            f"resume it with --num-processes {trained_on} (the global batch and its random numbers depend on it)"
        )
    # A checkpoint at --max-steps of a run killed before its final weights were written: resuming it
    # only writes them.
    if step > cfg.max_steps or (step == cfg.max_steps and run_status(out) == "finished"):
        raise UserError(
            f"--max-steps {cfg.max_steps}: the checkpoint {path} is at step {step} already; give a larger --max-steps"
        )
    return path


def expected_bytes(cfg: TrainConfig, trained_bytes: int) -> int:
    """Disk a run needs, from the size of what it trains (fp32): the final weights plus, per kept
    checkpoint, the weights twice (trainable state and user-facing file) and Adam's two moments (pure)."""
    n_checkpoints = max(1, cfg.max_steps // cfg.checkpoint_every)
    if cfg.keep_checkpoints:
        n_checkpoints = min(n_checkpoints, cfg.keep_checkpoints)
    return trained_bytes * (1 + 4 * n_checkpoints) + 50_000_000  # + logs, validation images, class images


def _check_room(cfg: TrainConfig, out: Path) -> None:
    """The output folder can be written and its disk has room for the run, before anything starts."""
    import shutil
    import tempfile

    parent = out
    while not parent.exists():
        parent = parent.parent
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".dreambooth-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"--output-dir {out}: cannot write in {parent} ({e.strerror or e})") from None
    need = expected_bytes(cfg, get_method(cfg).trained_bytes())
    free = shutil.disk_usage(parent).free
    if free < need:
        raise UserError(
            f"--output-dir {out}: {free / 1e9:.1f} GB free on its disk and the run needs about {need / 1e9:.1f} GB "
            f"({cfg.method}, {max(1, cfg.max_steps // cfg.checkpoint_every)} checkpoints); free space, raise "
            "--checkpoint-every or set --keep-checkpoints"
        )


def _check_fsdp(cfg: TrainConfig) -> None:
    """What --fsdp cannot shard, one line each."""
    if not cfg.fsdp:
        return
    refused = [
        (cfg.num_processes < 2, "--num-processes", "shards across processes; give --num-processes 2 or more (one per GPU)"),
        (not METHODS[cfg.method].shardable, "--method", f"{cfg.method} trains no model weights to shard"),
        (cfg.quantize_base is not None, "--quantize-base", "quantised base weights are not sharded; use one of the two"),
        (not OPTIMIZERS[cfg.optimizer].shards, f"--optimizer {cfg.optimizer}", "its states are not sharded here; use adamw"),
        (cfg.mixed_precision == "fp16", "--mixed-precision fp16", "needs a sharded gradient scaler; use bf16"),
        (cfg.ema_decay is not None, "--ema-decay", "the average of sharded weights is not kept; leave it out"),
        (cfg.train_identifier_embedding, "--train-identifier-embedding", "pivotal tuning's embedding rows are not sharded; leave it out"),
    ]  # fmt: skip
    for bad, flag, why in refused:
        if bad:
            raise UserError(f"{flag}: with --fsdp, {why}")


def _check_hardware(cfg: TrainConfig) -> None:
    if cfg.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                "--mixed-precision fp16: needs a CUDA GPU, and none is available (use bf16 or no on the CPU)"
            )
    get_optimizer(cfg).check()
    if (warning := OPTIMIZERS[cfg.optimizer].learning_rate_warning(cfg)) is not None:
        log.warning("%s", warning)
    from .trackers import check as check_trackers

    check_trackers(cfg.report_to)
