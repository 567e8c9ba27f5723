import argparse
from pathlib import Path

import pytest

from dreambooth.cli import _parser, train_config
from dreambooth.config import TrainConfig
from dreambooth.errors import UserError
from dreambooth.options import build, load_yaml

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
REQUIRED = dict(model="m", instance_dir="i", instance_prompt="a photo of sks dog", output_dir="o")


def parse(*argv) -> argparse.Namespace:
    return _parser().parse_args(["train", *argv])


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "model: base\ninstance-dir: photos\ninstance_prompt: a photo of sks cat\noutput_dir: out\n"
        "rank: 4\nlearning_rate: 3.0e-4\ntrain_text_encoder: true\n"
    )
    cfg = train_config(parse("--config", str(f), "--learning-rate", "1e-6", "--no-train-text-encoder"))
    assert cfg.rank == 4  # from the file
    assert cfg.learning_rate == 1e-6  # the flag wins
    assert cfg.train_text_encoder is False  # a flag can switch off what the file switched on
    assert cfg.max_steps == 2000 and cfg.instance_dir == "photos"  # default; hyphenated key accepted


def test_every_flag_has_a_config_key_of_the_same_name():
    parser = _parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    # (--local-files-only sets how this process reaches the hub, not a setting of the run)
    flags = {a.dest for a in train._actions if a.dest not in ("help", "config", "local_files_only")}
    assert flags == set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("learning_rat: 1.0e-4\n", "unknown key 'learning_rat'"),
        ("rank: four\n", "'rank': must be an int"),
        ("lr_scheduler: sometimes\n", "must be one of"),
        ("- a\n- b\n", "mapping"),
        ("rank: [\n", "not valid YAML"),
    ],
)
def test_bad_config_files_are_refused_by_name(tmp_path, text, problem):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=problem):
        load_yaml(f, TrainConfig)


def test_warmup_is_applied_or_refused_never_dropped():
    assert build(TrainConfig, REQUIRED).warmup_steps == 500
    assert build(TrainConfig, REQUIRED, {"lr_scheduler": "constant"}).warmup_steps == 0
    with pytest.raises(UserError, match="'constant' scheduler has no warmup"):
        build(TrainConfig, REQUIRED, {"lr_scheduler": "constant", "lr_warmup_steps": 500}).validate()
    with pytest.raises(UserError, match="less than --max-steps"):
        build(TrainConfig, REQUIRED, {"max_steps": 100}).validate()


def test_lr_schedule_really_warms_up():
    import torch
    from diffusers.optimization import get_scheduler

    cfg = build(TrainConfig, REQUIRED, {"lr_warmup_steps": 10, "max_steps": 40, "lr_scheduler": "cosine"})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    lrs = []
    for _ in range(40):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert (
        lrs[0] == 0 and lrs[5] == pytest.approx(0.5 * cfg.learning_rate) and lrs[10] == pytest.approx(cfg.learning_rate)
    )
    assert lrs[-1] < 0.01 * cfg.learning_rate


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_example_config_loads_and_validates(path):
    cfg = build(TrainConfig, load_yaml(path, TrainConfig))
    cfg.validate()
    assert cfg.instance_prompt and cfg.output_dir


def test_resume_takes_the_runs_saved_config_as_its_base(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(
        "model: base\ninstance_dir: photos\ninstance_prompt: a photo of sks cat\n"
        f"output_dir: {out}\nrank: 8\nmax_steps: 100\nresume: null\n"
    )
    cfg = train_config(parse("--output-dir", str(out), "--resume", "latest", "--max-steps", "300"))
    assert (cfg.model, cfg.rank, cfg.max_steps, cfg.resume) == ("base", 8, 300, "latest")
