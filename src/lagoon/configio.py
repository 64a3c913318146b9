"""Typed dataclass configs read from TOML with dotted overrides.

Every config section is a dataclass whose fields carry type annotations and a docstring. This module
turns nested dicts (from TOML files and ``--set a.b=c`` overrides) into those dataclasses, checking
each value against its annotation, rejecting unknown keys, and calling each section's `validate()`.
Every failure is a `ConfigError` whose message names the dotted field and what is allowed.

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``X | None``, unions of scalars
(``bool | str``), ``Literal[...]``, ``list[X]``, ``dict[str, X]``, ``Any`` and nested dataclasses.

A dataclass may define ``_preset_defaults(name) -> dict`` and a ``preset`` field: the named preset's
values are then used as defaults under the explicitly given keys. A ``_MOVED = {key: "where it went"}``
class attribute turns a retired key into a one-line error that says where it moved.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from lagoon.errors import ConfigError

_SCALARS = (int, float, bool, str)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "none"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"table of {_type_name(typing.get_args(annotation)[1])}"
    if dataclasses.is_dataclass(annotation):
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, field: str) -> Any:
    """Check `value` against `annotation`, converting ints to floats where a float is expected."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(field, f"must be {_type_name(annotation)}, got nothing")
        # Try exact-type matches first so that `bool | str` keeps a bool a bool.
        for option in sorted(options, key=lambda o: 0 if o is type(value) else 1):
            if option is type(None):
                continue
            try:
                return _convert(value, option, field)
            except ConfigError:
                continue
        raise ConfigError(field, f"must be {_type_name(annotation)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(field, f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"must be a {_type_name(annotation)}, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_convert(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(field, f"must be a {_type_name(annotation)}, got {value!r}")
        _, item = typing.get_args(annotation)
        return {str(k): _convert(v, item, f"{field}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(field, f"must be a table, got {value!r}")
        return from_dict(annotation, value, field)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, f"must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(field, f"must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(field, f"must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(field, f"must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config annotation {annotation!r} at {field}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking types and unknown keys, then `validate()`."""
    data = dict(data)
    preset_defaults = getattr(cls, "_preset_defaults", None)
    if preset_defaults is not None and data.get("preset") is not None:
        try:
            base = preset_defaults(data["preset"])
        except ConfigError as error:
            raise error.under(prefix) if prefix else error
        data = {**base, **data}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    moved = getattr(cls, "_MOVED", {})
    for key in unknown:
        if key in moved:   # a key that used to live here: say where it went
            raise ConfigError(f"{prefix}.{key}" if prefix else key, f"has moved: {moved[key]}")
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(name, f"unknown key; known keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        obj = cls(**kwargs)
    except ConfigError as error:
        raise error.under(prefix) if prefix else error
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as error:
            raise error.under(prefix) if prefix else error
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-data (TOML/JSON-serialisable) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a value parsed as a TOML literal (else a string)."""
    if "=" not in text:
        raise ConfigError("", f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [part.strip() for part in key.strip().split(".")]
    if not all(path):
        raise ConfigError("", f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each ``a.b=value`` override applied."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(path), f"cannot set a key inside {part!r}, which is a value")
            node = child
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning a missing file or a syntax error into a one-line `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file {path} does not exist")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path} is not valid TOML: {error}") from None


def dumps_toml(data: dict[str, Any]) -> str:
    """Serialise nested plain data as TOML (tables for dicts, inline arrays for lists)."""

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{_key(k)} = {literal(v)}" for k, v in value.items() if v is not None) + "}"
        raise TypeError(f"cannot write {value!r} as TOML")

    lines: list[str] = []

    def table(prefix: str, node: dict[str, Any]) -> None:
        scalars = {k: v for k, v in node.items() if not isinstance(v, dict) and v is not None}
        tables = {k: v for k, v in node.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{_key(key)} = {literal(value)}")
        if scalars:
            lines.append("")
        for key, value in tables.items():
            table(f"{prefix}.{_key(key)}" if prefix else _key(key), value)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'
