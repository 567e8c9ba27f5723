"""Typed options: a field declares its default, help, choices and bounds once (its metadata); the same
declaration gives the flag (`learning_rate` -> `--learning-rate`), the config-file key (underscores;
`learning-rate` is accepted too), the type check and the bounds check. An unknown key or a value of
the wrong type is an error, never a silent default. Imports no torch, so `dreambooth --help` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    multiple_of: int | None = None,
    required: bool = False,
    nargs: str | None = None,
    positional: bool = False,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with its flag's help, choices and bounds (ge >=, gt >, le <=, lt <); positional:
    an argument without a flag (`export OUT`)."""
    meta = {"help": help, "required": required, "positional": positional}
    if metavar is not None:
        meta["metavar"] = metavar
    for key, value in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if value is not None:
            meta[key] = value
    if multiple_of is not None:
        meta["multiple_of"] = multiple_of
    if nargs is not None:
        meta["nargs"] = nargs
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def check_required(cfg: Any, skip: tuple = ()) -> None:
    for f in dataclasses.fields(cfg):
        if f.metadata.get("required") and f.name not in skip and getattr(cfg, f.name) in (None, ""):
            raise UserError(f"--{flag_name(f.name)}: required (as a flag or as '{f.name}' in the config file)")


def _bound_problem(meta: dict, value: Any) -> str | None:
    """What is wrong with value under the field's bounds, in words (pure); None when it is within them."""
    ge, gt, le, lt, step = (meta.get(k) for k in ("ge", "gt", "le", "lt", "multiple_of"))
    ok = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
        and (step is None or value % step == 0)
    )
    if ok:
        return None
    if step is not None:
        return f"must be a positive multiple of {step}, got {value}"
    if ge is not None and le is not None:
        return f"must be {ge:g}-{le:g}, got {value:g}"
    if ge is not None and lt is not None:
        return f"must be in [{ge:g}, {lt:g}), got {value:g}"
    if gt is not None and lt is not None:
        return f"must be between {gt:g} and {lt:g}, got {value:g}"
    if gt is not None and le is not None:
        return f"must be > {gt:g} and at most {le:g}, got {value:g}"
    if ge is not None:
        return (
            f"must be at least {ge:g}, got {value:g}" if isinstance(value, int) else f"must be >= {ge:g}, got {value:g}"
        )
    return f"must be > {gt:g}, got {value:g}"


def check_bounds(cfg: Any) -> None:
    """Every field within the bounds its declaration gives (None, an unset option, always is)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or isinstance(value, (list, str, bool)):
            continue
        problem = _bound_problem(f.metadata, value)
        if problem:
            raise UserError(f"--{flag_name(f.name)}: {problem}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of an annotation such as `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """Check (and lightly convert) one value against the field's type and choices; raise UserError."""
    value = _convert(cls, key, value, source)
    choices = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("choices")
    if choices and value not in choices and value is not None:  # (None: an optional field's "not given")
        raise UserError(f"{source}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _convert(cls: type, key: str, value: Any, source: str) -> Any:
    tp, optional = _base_type(_field_types(cls)[key])
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if elem is not str else [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: must be a list of {elem.__name__}, got {value!r}")
        return [_scalar(elem, v, source) for v in value]
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: must not be empty")
    return _scalar(tp, value, source)


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _scalar(tp: type, value: Any, source: str) -> Any:
    if value is None:
        raise UserError(f"{source}: must not be empty")
    converted = _as(tp, value)
    if converted is None:
        raise UserError(f"{source}: must be {'an ' if tp is int else 'a '}{tp.__name__}, got {value!r}")
    return converted


def _as(tp: type, value: Any) -> Any:
    """value as a tp (bool, float, int or str), or None where it is not one."""
    if isinstance(value, bool):
        return value if tp is bool else None
    if tp is bool:
        text = str(value).lower() if isinstance(value, str) else None
        return True if text in _TRUE else (False if text in _FALSE else None)
    if tp is str:
        return str(value) if isinstance(value, (str, int, float)) else None
    if isinstance(value, (int, float)) and (tp is float or isinstance(value, int)):
        return tp(value)
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            return None
    return None


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a config file into {field: value}; unknown keys and wrong types are errors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: must be a mapping of keys to values")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"--config {path}: unknown key '{key}'")
        out[name] = coerce(cls, name, value, f"--config {path}: '{key}'")
    return out


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field; defaults are suppressed so that only given flags override the file."""
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(types_[f.name])
        _add_argument(parser, f, tp)


def _add_argument(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    help_ = f.metadata.get("help", "")
    if default not in (None, False, []) and tp is not bool:
        help_ += f" (default: {default})"
    if f.metadata.get("positional"):
        extra = {"nargs": f.metadata["nargs"]} if f.metadata.get("nargs") else {}
        parser.add_argument(f.name, help=help_, metavar=f.metadata.get("metavar", f.name.upper()), **extra)
        return
    flag = f"--{flag_name(f.name)}"
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
    if f.metadata.get("metavar"):
        kw["metavar"] = f.metadata["metavar"]
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp)
        if f.metadata.get("nargs"):  # --subjects A B C
            parser.add_argument(flag, nargs=f.metadata["nargs"], **{"metavar": "DIR", **kw})
        elif elem is str:  # repeatable: --prompt A --prompt B
            parser.add_argument(flag, action="append", **{"metavar": "TEXT", **kw})
        else:  # comma-separated: --validation-seeds 0,1
            parser.add_argument(flag, type=str, **{"metavar": f"{elem.__name__.upper()},...", **kw})
    elif tp is bool:
        action = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
        parser.add_argument(flag, action=action, **kw)
    else:
        if "choices" in f.metadata:
            kw["help"] += f" [{' | '.join(f.metadata['choices'])}]"
        parser.add_argument(flag, type=str, **{"metavar": tp.__name__.upper(), **kw})


def build(cls: type, *layers: dict[str, Any]) -> Any:
    """Merge defaults < layers (in order) into a config object; flag values are type-checked here."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    values = {key: coerce(cls, key, value, f"--{flag_name(key)}") for key, value in merged.items()}
    return cls(**values)


def from_namespace(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(ns).items() if k in names}


@dataclasses.dataclass
class NoOptions:
    """A registered unit (method, optimizer) without options of its own."""


def refuse_others_options(cfg: Any, others: list, label: str, chosen: str) -> None:
    """A registered unit's choice (chosen: "--method full") refuses the options of the other units
    (each with its `options` dataclass and, by the attribute `label` names, how a sentence names it)
    that are set away from their defaults: one line naming the option."""
    for other in others:
        for key, default in defaults_of(other.options).items():
            if getattr(cfg, key) != default:
                raise UserError(f"--{flag_name(key)}: a {getattr(other, label)} setting, and {chosen}")


def defaults_of(cls: type) -> dict[str, Any]:
    """Each field's default value."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out
