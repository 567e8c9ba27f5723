"""DreamBench (Ruiz et al., 2023): the 30 subjects' class nouns and the 25 prompt templates for
objects and for live subjects, read from the dataset's own file shipped with the package."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

LIVE_CLASSES = ("cat", "dog")  # DreamBench's live subjects are its pets


@lru_cache(maxsize=1)
def _data() -> tuple[dict[str, str], list[str], list[str]]:
    text = (files("dreambooth") / "assets" / "dreambench" / "prompts_and_classes.txt").read_text(encoding="utf-8")
    classes_part, prompts_part = text.split("\nPrompts", 1)
    classes = {}
    for line in classes_part.splitlines():
        if "," in line and not line.startswith("subject_name"):
            subject, noun = line.split(",", 1)
            classes[subject.strip()] = noun.strip()
    object_part, live_part = prompts_part.split("Live Subject Prompts", 1)
    template = re.compile(r"'([^']*)'\.format\(unique_token, class_token\)")
    return classes, template.findall(object_part), template.findall(live_part)


def subject_classes() -> dict[str, str]:
    return dict(_data()[0])


def kind_of(class_noun: str) -> str:
    return "live" if class_noun.strip().lower() in LIVE_CLASSES else "object"


def prompts(kind: str, identifier: str, class_noun: str) -> list[str]:
    """The 25 DreamBench prompts of a kind ('live' or 'object') for one subject."""
    _, objects, live = _data()
    templates = live if kind == "live" else objects
    return [t.format(identifier, class_noun) for t in templates]


def spread(prompts: list[str], n: int) -> list[str]:
    """n of the prompts, evenly spread over the list (backgrounds, accessories, colours, ...)."""
    return [prompts[round(i * (len(prompts) - 1) / max(1, n - 1))] for i in range(min(n, len(prompts)))]
