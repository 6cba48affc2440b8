"""The config's keys, for people: every dotted key with its type, default and description
(``dcgan config keys``), the nearest valid keys to a wrong one, and a config as YAML that
loads back to the same config (``dcgan config show``).

Everything here reads the pydantic models it is given, so the Field descriptions in
:mod:`pipelines.config` (and the sections beside it, :mod:`pipelines.config_sections`)
stay the one place a key is documented.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Key:
    key: str  # dotted, e.g. train.lr_g
    type: str  # e.g. float, int or null, batch|spectral|none
    default: Any
    description: str


def _section(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def type_name(annotation) -> str:
    """A field's type as a reader writes it: ``int``, ``str or null``, ``batch|spectral|none``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def config_keys(model: type[BaseModel], prefix: str = "") -> list[Key]:
    """Every leaf key of ``model``, depth first, in declaration order."""
    keys = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            keys += config_keys(section, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        keys.append(Key(prefix + name, type_name(field.annotation), default, field.description or ""))
    return keys


def section_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        if _section(field.annotation) is not None:
            names.append(prefix + name)
            names += section_names(field.annotation, f"{prefix}{name}.")
    return names


def nearest_keys(key: str, model: type[BaseModel], n: int = 3) -> list[str]:
    """The valid keys (or sections) closest to ``key``, best first: difflib's ratio >= 0.6 and
    within 0.15 of the best one's."""
    ancestors = {key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)}  # train for train.lr: no help
    candidates = [k.key for k in config_keys(model)] + [s for s in section_names(model) if s not in ancestors]
    near = difflib.get_close_matches(key, candidates, n=n, cutoff=0.6)
    best = difflib.SequenceMatcher(None, key, near[0]).ratio() if near else 0
    return [k for k in near if difflib.SequenceMatcher(None, key, k).ratio() >= best - 0.15]  # the close ones only


def format_keys(keys: list[Key]) -> str:
    """One line a key: ``train.lr_g  float  0.0002  description``, columns aligned."""
    rows = [(k.key, k.type, "null" if k.default is None else _scalar(k.default), k.description) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip() or "''"


def config_yaml(values: dict[str, Any]) -> str:
    """A config's values (``cfg.model_dump()``) as block YAML in declaration order; saved to a
    file, ``--config FILE`` loads it back to the same config."""
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False, width=100)


def _section_model(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    for part in path:
        field = model.model_fields.get(part)
        model = _section(field.annotation) if field is not None else None
        if model is None:
            return None
    return model


def unknown_key_message(key: str, section_path: list[str], model: type[BaseModel]) -> str:
    """``unknown key 'train.lr' (did you mean train.lr_g, train.lr_d?)``: the nearest valid keys,
    else what the section allows; and where every key is listed."""
    near = nearest_keys(key, model)
    if near:
        hint = f"did you mean {', '.join(near)}?"
    else:
        section = _section_model(model, section_path)
        where = ".".join(section_path) or "the top level"
        hint = f"allowed in {where}: {', '.join(section.model_fields) if section else '?'}"
    return f"unknown key '{key}' ({hint}); `dcgan config keys` lists every key"


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's errors as one line (one error) or one line each, naming the key and what is allowed."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "<config>"
        if e["type"] == "extra_forbidden":
            lines.append(unknown_key_message(key, loc[:-1], model))
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config: " + lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)
