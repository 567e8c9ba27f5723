"""Several concepts in one run (issue 11): each with its own prior preservation, taken in turn."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dreambooth.cli import main
from dreambooth.config import TrainConfig
from dreambooth.data.examples import tokenize
from dreambooth.training.loop import resolved, setup, train, training_step
from dreambooth.training.preflight import preflight


@pytest.fixture
def concepts_file(tmp_path, instance_dir, class_dir) -> Path:
    few = tmp_path / "mug"
    few.mkdir()
    for p in sorted(instance_dir.iterdir())[:2]:
        shutil.copy(p, few / p.name)
    classes = tmp_path / "class-dog"
    shutil.copytree(class_dir, classes)
    f = tmp_path / "concepts.yaml"
    f.write_text(
        yaml.safe_dump(
            [
                dict(
                    instance_dir=str(instance_dir),
                    instance_prompt="a photo of sks dog",
                    class_prompt="a photo of a dog",
                    class_dir=str(classes),
                    num_class_images=4,
                ),
                dict(instance_dir="mug", instance_prompt="a photo of zwx mug"),  # relative to the file
            ]
        )
    )
    return f


def _cfg(make_cfg, concepts_file, **kw) -> TrainConfig:
    return make_cfg(instance_dir=None, instance_prompt=None, concepts=str(concepts_file), **kw)


def test_concepts_take_turns_each_with_its_own_prompt_and_prior(make_cfg, concepts_file):
    cfg = resolved(_cfg(make_cfg, concepts_file, gradient_accumulation=2))
    run = setup(cfg, preflight(cfg), progress=False)
    (dog, dog_class), (mug, mug_class) = run.data.concepts
    assert len(dog.paths) > len(mug.paths) == 2 and len(dog_class.paths) == 4 and mug_class is None
    assert (mug.prompt_ids[0] == tokenize(run.comps.tokenizer, "a photo of zwx mug")[0]).all()
    turns = [run.data.sets_of_micro_batch(m) for m in range(4)]
    assert [sets for sets, _ in turns] == [[dog, dog_class], [mug], [dog, dog_class], [mug]]
    assert [turn for _, turn in turns] == [0, 0, 1, 1]  # each concept's own count: balanced, whatever its size
    _, _, prior = training_step(run, 0, 0)  # the dog's micro-batch has a class half
    assert prior.item() > 0
    _, _, prior = training_step(run, 0, 1)  # the mug's has none
    assert prior.item() == 0


def test_a_concepts_run_trains_and_its_card_names_both(make_cfg, concepts_file, tmp_path):
    out = train(_cfg(make_cfg, concepts_file, max_steps=4), progress=False)
    card = (out / "README.md").read_text()
    assert "a photo of sks dog; a photo of zwx mug" in card


@pytest.mark.parametrize(
    "entries,message",
    [
        ([dict(instance_dir="nowhere", instance_prompt="a photo of sks dog")], "concept 1: --instance-dir"),
        ([dict(instance_prompt="a photo of sks dog")], "concept 1: 'instance_dir' is required"),
        ([dict(instance_dir=".", instance_prompt="x", colour="red")], "concept 1: unknown key 'colour'"),
        ([dict(instance_dir=".", instance_prompt="x", class_prompt="a dog")], "class_prompt and class_dir go together"),
        ({"a": 1}, "must be a list of concepts"),
    ],
)
def test_bad_concepts_files_are_one_line_and_nothing_starts(entries, message, make_cfg, tmp_path, capsys):
    f = tmp_path / "concepts.yaml"
    f.write_text(yaml.safe_dump(entries))
    cfg = make_cfg()
    out = tmp_path / "run"
    args = ["train", "--model", cfg.model, "--concepts", str(f), "--output-dir", str(out), "--resolution", "64"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --concepts {f}") and message in line, line
    assert not out.exists()


def test_concepts_replace_the_instance_flags(make_cfg, concepts_file, capsys):
    args = ["train", "--model", make_cfg().model, "--concepts", str(concepts_file), "--output-dir", "x"]
    assert main([*args, "--instance-prompt", "a photo of sks dog"]) == 2
    assert "--instance-prompt: not with --concepts" in capsys.readouterr().err
