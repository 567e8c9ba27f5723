"""Per-image captions, kohya's convention: `photo.jpg` is described by `photo.txt` beside it.

A caption replaces the instance prompt for its photo ("sks dog lying on a red sofa" teaches what is
the subject and what is the sofa). It must name the subject by its identifier: a caption without it
gets the instance prompt put in front ("a photo of sks dog, lying on a red sofa"), or, with
--caption-identifier require, is refused."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError


def caption_path(image: Path) -> Path:
    return Path(image).with_suffix(".txt")


def read_caption(image: Path) -> str | None:
    """The photo's caption (whitespace collapsed), or None without a caption file or with an empty one."""
    path = caption_path(image)
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"caption {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"caption {path}: cannot be read ({e.strerror or e})") from None
    text = " ".join(text.split())
    return text or None


def identifier_of(instance_prompt: str, class_prompt: str | None) -> str | None:
    """The rare identifier: the word before the class noun (the class prompt's last word, else the
    instance prompt's) in the instance prompt, e.g. 'sks' in 'a photo of sks dog' (pure)."""
    words = re.findall(r"[\w<>-]+", instance_prompt)
    noun = (re.findall(r"[\w<>-]+", class_prompt) or [None])[-1] if class_prompt else (words or [None])[-1]
    before = [words[i - 1] for i, w in enumerate(words) if w == noun and i > 0]
    return before[0] if before else None


def with_identifier(caption: str, instance_prompt: str, identifier: str | None, mode: str, source: Path) -> str:
    """The prompt a caption trains with (pure apart from UserError)."""
    if identifier is not None and re.search(rf"(?<![\w<>-]){re.escape(identifier)}(?![\w<>-])", caption):
        return caption
    if mode == "require":
        raise UserError(
            f"caption {source}: does not name the subject's identifier '{identifier}' "
            "(add it, or drop --caption-identifier require to have the instance prompt put in front)"
        )
    return f"{instance_prompt}, {caption}"


def instance_captions(paths: list[Path], instance_prompt: str, identifier: str | None, mode: str) -> list[str] | None:
    """The prompt of each photo (its caption, or the instance prompt where it has none), or None when
    no photo has a caption."""
    captions = [read_caption(p) for p in paths]
    if all(c is None for c in captions):
        return None
    return [
        instance_prompt if c is None else with_identifier(c, instance_prompt, identifier, mode, caption_path(p))
        for p, c in zip(paths, captions)
    ]
