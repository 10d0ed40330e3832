"""Nested frozen config dataclasses to and from JSON-ready dicts.

Every configurable piece of hgm (the reconstructor, its stages, the fit, the renderer of the mesh
stage) is a frozen dataclass of plain values, tuples and other such dataclasses. One pair of
functions serialises all of them, so a configuration written into `report.json` or a wire result
can be loaded back into exactly the same object (`config_from_dict(type(c), config_to_dict(c)) == c`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigFieldError(ValueError):
    """A config dict names an unknown field or holds a value of the wrong shape."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance -> nested dict of JSON values (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """The inverse of `config_to_dict`: missing fields keep their defaults, unknown ones are errors.

    Raises:
        ConfigFieldError: an unknown field, or a nested section that is not a mapping.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigFieldError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigFieldError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**{k: _value(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def _value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option):
            return config_from_dict(option, value, where=where)
        if typing.get_origin(option) is tuple and isinstance(value, list):
            inner = typing.get_args(option)
            if len(inner) == 2 and inner[1] is Ellipsis:
                return tuple(_value(inner[0], v, where) for v in value)
            return tuple(_value(h, v, where) for h, v in zip(inner, value))
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def config_override(config: T, changes: dict[str, Any]) -> T:
    """`config` with fields replaced by dotted path, e.g. `{"body.fit.iterations": 60}`.

    Raises:
        ConfigFieldError: a path that names no field.
    """
    for path, value in changes.items():
        config = _override(config, path.split("."), value, path)
    return config


def _override(config: Any, parts: list[str], value: Any, path: str) -> Any:
    names = {f.name for f in dataclasses.fields(config)}
    if parts[0] not in names:
        raise ConfigFieldError(f"{path}: {type(config).__name__} has no field {parts[0]!r}; known: {', '.join(sorted(names))}")
    if len(parts) > 1:
        value = _override(getattr(config, parts[0]), parts[1:], value, path)
    return dataclasses.replace(config, **{parts[0]: value})
