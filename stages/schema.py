"""Validate plain YAML data into frozen dataclasses, naming the key path of every problem.

A config class is a frozen dataclass whose fields are declared with `spec(...)`: the default,
and what is allowed (a range, a set of choices, a custom check). `build(cls, raw, path)`
turns a mapping from params.yaml into an instance, or raises one `ParamsError` listing every
problem as `key.path: what is wrong (what is allowed)`. Supported field types: int, float,
bool, str, `X | None` and `tuple[int, ...]`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from stages.errors import ParamsError

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def spec(
    default: Any = _MISSING,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with validation metadata. `check(value)` returns an error or None."""
    meta = {"min": min, "max": max, "choices": choices, "check": check, "doc": doc}
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Errors:
    """Collects `path: message` lines so one run reports every problem at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")

    def raise_if_any(self, source: str = "params.yaml") -> None:
        if self.lines:
            body = "\n".join(f"  - {line}" for line in self.lines)
            raise ParamsError(f"{source} is invalid:\n{body}")


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{describe_type(inner[0])} or null"
    if origin is tuple:
        return f"a list of {describe_type(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _allowed(field: dataclasses.Field, tp: Any) -> str:
    meta = field.metadata
    parts = [describe_type(tp)]
    if meta.get("choices"):
        parts = ["one of " + ", ".join(repr(c) for c in meta["choices"])]
    if meta.get("min") is not None and meta.get("max") is not None:
        parts.append(f"in [{meta['min']}, {meta['max']}]")
    elif meta.get("min") is not None:
        parts.append(f">= {meta['min']}")
    elif meta.get("max") is not None:
        parts.append(f"<= {meta['max']}")
    return " ".join(parts)


def _scalar(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, converted) for one scalar of type tp; YAML ints are accepted where floats are."""
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (ok and math.isfinite(value)), (float(value) if ok else value)
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in a config class


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if meta.get("choices") is not None and value not in meta["choices"]:
        return False
    if meta.get("min") is not None and value < meta["min"]:
        return False
    if meta.get("max") is not None and value > meta["max"]:
        return False
    return True


def _convert(value: Any, tp: Any, field: dataclasses.Field, path: str, errors: Errors) -> Any:
    meta = field.metadata
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _convert(value, inner, field, path, errors)
    bad = f"got {value!r}; allowed: {_allowed(field, tp)}"
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            errors.add(path, f"must be a non-empty list; {bad}")
            return None
        items = []
        for i, item in enumerate(value):
            ok, item = _scalar(item, item_tp)
            if not ok or not _in_range(item, meta):
                errors.add(f"{path}[{i}]", f"got {item!r}; each item must be {_allowed(field, item_tp)}")
                return None
            items.append(item)
        converted: Any = tuple(items)
    else:
        ok, converted = _scalar(value, tp)
        if not ok or not _in_range(converted, meta):
            errors.add(path, bad)
            return None
    check = meta.get("check")
    if check is not None:
        problem = check(converted)
        if problem:
            errors.add(path, f"got {value!r}; {problem}")
            return None
    return converted


def did_you_mean(key: Any, allowed: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'train'?)' for a key one typo away from an allowed one, else ''."""
    import difflib

    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def build(cls: type[T], raw: Any, path: str, errors: Errors) -> T | None:
    """Validate `raw` (a mapping, or None for all defaults) into `cls`; problems go to errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errors.add(path, f"must be a mapping of options, got {type(raw).__name__} {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in raw if k not in fields]
    for key in unknown:
        allowed = ", ".join(fields) or "(none)"
        errors.add(f"{path}.{key}", f"unknown key{did_you_mean(key, list(fields))}; allowed keys: {allowed}")
    values: dict[str, Any] = {}
    n_before = len(errors.lines)
    for name, field in fields.items():
        if name in raw:
            values[name] = _convert(raw[name], hints[name], field, f"{path}.{name}", errors)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            errors.add(f"{path}.{name}", f"is required; allowed: {_allowed(field, hints[name])}")
    if unknown or len(errors.lines) > n_before:
        return None
    return cls(**values)


def to_plain(config: Any) -> dict[str, Any]:
    """A config as YAML/JSON-ready plain data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
