"""Validate plain YAML data into frozen pydantic dataclasses, naming the key path of every problem.

A config class is declared with `@config`: strict types (no "3" for 3, no true for 1, but a
YAML int where a float is wanted), no unknown keys, finite numbers, ranges as `Field(ge=...)`,
choices as `Literal`, custom checks as validators that raise ValueError. `build(cls, raw, path,
errors)` turns a mapping from params.yaml into an instance, or adds every problem to `errors`
as `key.path: got <value>; allowed: <what the schema allows>`; `Errors` raises them as one
`ParamsError`. The configs stay dataclasses: `dataclasses.replace` revalidates.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic.dataclasses
from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from stages.errors import ParamsError

T = TypeVar("T")
config = pydantic.dataclasses.dataclass(
    frozen=True, config=ConfigDict(strict=True, extra="forbid", allow_inf_nan=False))
# A YAML list where a tuple is declared (strict mode takes only a tuple): Annotated[tuple[...], FROM_LIST]
FROM_LIST = BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)


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


@functools.cache
def adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
         "null": "null"}
BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def describe(s: dict[str, Any]) -> str:
    """What a JSON schema allows, in words: 'an integer in [1, 64]', 'a number in (0, 1]'."""
    if "anyOf" in s:
        return " or ".join(map(describe, s["anyOf"]))
    if "enum" in s:
        return "one of " + ", ".join(map(repr, s["enum"]))
    if s.get("type") == "array":
        return f"a {'non-empty ' * bool(s.get('minItems'))}list, each item {describe(s['items'])}"
    bounds = [(k, s[k]) for k in BOUNDS if k in s]
    if len(bounds) == 2:
        (lo_kind, lo), (hi_kind, hi) = bounds
        return (f"{WORDS[s['type']]} in {'(' if lo_kind.startswith('excl') else '['}{lo}, "
                f"{hi}{')' if hi_kind.startswith('excl') else ']'}")
    return " ".join([WORDS[s["type"]], *(f"{BOUNDS[k]} {v}" for k, v in bounds)])


def did_you_mean(key: Any, allowed: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'train'?)' for a key one typo away from an allowed one, else ''."""
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def problem(cls: type, error: Any, given: dict[str, Any]) -> str | None:
    """One pydantic error in the project's words; None for one another error already says."""
    name, *index = error["loc"]
    kind, value = error["type"], error["input"] if index or name not in given else given[name]
    if kind == "unexpected_keyword_argument":
        fields = field_names(cls)
        return f"unknown key{did_you_mean(name, fields)}; allowed keys: {', '.join(fields) or '(none)'}"
    if kind == "too_short" and value:  # pydantic counts the items left after a bad one
        return None
    if kind == "value_error":
        return f"got {value!r}; {error['ctx']['error']}"
    s = adapter(cls).json_schema()["properties"][name]
    for _ in index:
        s = s["items"]
    return f"{'is required' if kind == 'missing' else f'got {value!r}'}; allowed: {describe(s)}"


def build(cls: type[T], raw: Any, path: str, errors: Errors) -> T | None:
    """Validate `raw` (a mapping, or None for all defaults) into `cls`; problems go to errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errors.add(path, f"must be a mapping of options, got {type(raw).__name__} {raw!r}")
        return None
    given = {str(k): v for k, v in raw.items()}
    try:
        return cls(**given)
    except ValidationError as e:
        for error in e.errors():
            message = problem(cls, error, given)
            if message is not None:
                name, *index = error["loc"]
                errors.add(f"{path}.{name}" + "".join(f"[{i}]" for i in index), message)
        return None


def to_plain(config: Any) -> dict[str, Any]:
    """A config as YAML/JSON-ready plain data (tuples become lists)."""
    return adapter(type(config)).dump_python(config, mode="json")
