"""``key=value`` overrides on a nested mapping: what the command line (``unikd distill run.yaml optim.lr=1e-4``) and
a study's ``-o`` patches write. Values are YAML scalars or lists; a path indexes lists by number. A path that cannot
be set is a ``ConfigError`` naming the override and saying how to write it."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from unikd.errors import ConfigError


def _parse_value(raw: str) -> Any:
    """CLI values are YAML scalars/lists: 'true', '3', '1e-4', '[0, 2]', 'null'."""
    return yaml.safe_load(raw)


def _scalar_prefix(schema: type[BaseModel] | None, parts: list[str]) -> str | None:
    """The leading part of ``parts`` that ``schema`` types as a plain value (a number, a string, a literal),
    when ``parts`` reaches past it (``teacher.path.x``: ``teacher.path``); None when the path may go on."""
    cls = schema
    for j, part in enumerate(parts[:-1]):
        if cls is None or not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None  # a list index, a free mapping, a term (one class per knowledge type) or an unknown field
        ann = cls.model_fields[part].annotation
        if get_origin(ann) in (Union, types.UnionType):  # unwrap Optional[X]; a real choice of types stops the walk
            args = [a for a in get_args(ann) if a is not type(None)]
            ann = args[0] if len(args) == 1 else ann
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        elif get_origin(ann) in (list, dict, Union, types.UnionType) or ann is Any:
            return None
        else:
            return ".".join(parts[: j + 1])
    return None


def _child(node: Any, part: str, key: str, prefix: str, nxt: str | None) -> Any:
    """``node[part]`` for an override's path, creating a missing mapping/list on the way (``nxt`` is the next
    part; None at the last one). A list takes an index 0..len (len appends); anything else names the override."""
    if isinstance(node, list):
        if not part.isdigit():
            raise ConfigError(
                key,
                f"{prefix} is a list, and {part!r} is not an index",
                f"use a number, e.g. {key.replace(f'{prefix}.{part}', f'{prefix}.0', 1)}=...",
            )
        index = int(part)
        if index > len(node) and not node:
            raise ConfigError(
                key,
                f"{prefix} is empty, so index {index} does not exist",
                f"use index 0 to add the first entry, or set the whole list ({prefix}=[...])",
            )
        if index > len(node):
            raise ConfigError(
                key,
                f"{prefix} has {len(node)} entr{'y' if len(node) == 1 else 'ies'} (indices 0..{len(node) - 1}), so "
                f"index {index} does not exist",
                f"use an index below {len(node)}, {len(node)} to add an entry, or set the whole list ({prefix}=[...])",
            )
        if index == len(node):
            node.append([] if (nxt or "").isdigit() else {} if nxt is not None else None)
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(
            key,
            f"{prefix} is a single value ({node!r}), so it has no {part!r} inside",
            f"set {prefix}=<value> itself, or check the field path (`unikd config-schema` lists the fields)",
        )
    if nxt is not None and node.get(part) is None:
        node[part] = [] if nxt.isdigit() else {}
    return node.get(part)


def apply_overrides(data: dict, overrides: list[str], schema: type[BaseModel] | None = None) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (lists indexed by number: plan.terms.0.weight=2).

    A path that indexes past a list's end (``plan.terms.9``, where len is the next free index), uses a word as
    a list index, or reaches into a single value (``plan.hard_label_weight.0``; with ``schema``, also a value
    the data does not hold yet, ``teacher.path.x``) is a ``ConfigError`` naming the override.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value", "write e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(
                key, "an override's key has an empty part", "write dotted field names, e.g. optim.lr=1e-4"
            )
        leaf = _scalar_prefix(schema, parts)
        if leaf is not None:
            raise ConfigError(
                key,
                f"{leaf} is a single value, so it has no {parts[leaf.count('.') + 1]!r} inside",
                f"set {leaf}=<value> itself (`unikd config-schema` lists the fields)",
            )
        node: Any = data
        for j, part in enumerate(parts):
            prefix = ".".join(parts[:j]) or "the config"
            if j == len(parts) - 1:
                _child(node, part, key, prefix, None)  # checks the index / the container
                if isinstance(node, list):
                    node[int(part)] = _parse_value(raw)
                else:
                    node[part] = _parse_value(raw)
            else:
                node = _child(node, part, key, prefix, parts[j + 1])
    return data
