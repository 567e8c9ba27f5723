"""Shared fixtures: one tiny model per session, built offline through the same code users run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each (before torch)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from dreambooth.config import TrainConfig  # noqa: E402
from dreambooth.demo import example_subject  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from dreambooth.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def class_dir(tmp_path_factory, tiny_model) -> Path:
    """Four class images generated once by the tiny model (tests copy it when they add to it)."""
    from helpers import dog_class_images

    d = tmp_path_factory.mktemp("class") / "dog"
    dog_class_images(tiny_model, d, range(4))
    return d


@pytest.fixture
def instance_dir(tmp_path) -> Path:
    d = tmp_path / "instance"
    shutil.copytree(example_subject(), d)
    return d


@pytest.fixture
def make_cfg(tiny_model, instance_dir, tmp_path):
    """A fast training config on the tiny model; keyword arguments override."""

    def make(**kw) -> TrainConfig:
        base = dict(
            model=str(tiny_model),
            instance_dir=str(instance_dir),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "run"),
            resolution=64,
            max_steps=2,
            learning_rate=1e-3,
            lr_scheduler="constant",
            checkpoint_every=1000,
        )
        if kw.get("method", "lora") == "lora":
            base["rank"] = 4
        base.update(kw)
        return TrainConfig(**base)

    return make


def _train_lora(tmp_path_factory, tiny_model, name, **kw):
    from dreambooth.training.loop import train

    out = tmp_path_factory.mktemp(name) / "run"
    cfg = TrainConfig(
        model=str(tiny_model),
        instance_dir=str(example_subject()),
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        resolution=64,
        max_steps=4,
        learning_rate=1e-2,
        lr_scheduler="constant",
        rank=4,
        checkpoint_every=2,
        **kw,
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def lora_with_te(tmp_path_factory, tiny_model) -> Path:
    """A run whose LoRA has UNet and text-encoder weights (checkpoints at steps 2 and 4)."""
    return _train_lora(tmp_path_factory, tiny_model, "lora_te", train_text_encoder=True, text_encoder_lr=1e-2)


@pytest.fixture(scope="session")
def lora_unet_only(tmp_path_factory, tiny_model) -> Path:
    return _train_lora(tmp_path_factory, tiny_model, "lora_unet")


@pytest.fixture(scope="session")
def extractors(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny random DINO-layout ViT and CLIP folders (offline stand-ins for the real extractors)."""
    from dreambooth.tiny import build_tiny_clip, build_tiny_dino

    root = tmp_path_factory.mktemp("extractors")
    return build_tiny_dino(root / "dino"), build_tiny_clip(root / "clip")


# The files whose tests take longest (measured with --durations), started first: pytest-xdist's
# --dist loadfile hands whole files to its workers in collection order, so a long file collected last
# leaves the other worker idle at the end (about 40 s of a 9.5-minute run).
LONGEST_FIRST = (
    "test_sweep.py",
    "test_distributed.py",
    "test_toyworld_model.py",
    "test_kill.py",
    "test_ui_browser.py",
    "test_flow.py",
    "test_ui_backend.py",
    "test_toyworld.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
