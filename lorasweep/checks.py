"""A config field's one home: `f(default, help, check)` gives its default, help text and check together.

The schema (lorasweep/schema.py) and the method and task registries declare fields with `f`; the same Check
runs on a composed config and on every value a sweep space can give the field, so both refuse with one
`ConfigError(field, value, check.allowed)`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lorasweep.errors import ConfigError


@dataclass(frozen=True)
class Check:
    ok: Callable[[Any], bool]
    allowed: str  # what ConfigError says is allowed

    def __call__(self, field: str, value: Any) -> None:
        if not self.ok(value):
            raise ConfigError(field, value, self.allowed)


def f(default: Any, help: str, check: Check | None = None) -> dataclasses.Field:
    """A dataclass field with its help and check in its metadata (a mutable default is copied per instance)."""
    meta = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _or_null(check: Check, null_means: str) -> Check:
    return Check(lambda v: v is None or check.ok(v), f"{check.allowed}, or null ({null_means})")


def integer(low: int | None = None, high: int | None = None, null: str | None = None, note: str = "") -> Check:
    """An int in [low, high]; `null` says what null means when null is allowed."""
    what = (
        f"an integer in [{low}, {high}]"
        if low is not None and high is not None
        else f"an integer >= {low}"
        if low is not None
        else "an integer"
    )
    c = Check(
        lambda v: _int(v) and (low is None or v >= low) and (high is None or v <= high),
        what + (f" {note}" if note else ""),
    )
    return _or_null(c, null) if null else c


def number(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False, null=None
) -> Check:
    """An int or float in the interval; open ends exclude the bound."""

    def ok(v):
        if not _num(v) or v != v:  # NaN is no number a field takes
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    if low is not None and high is not None:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        what = "a number"
    c = Check(ok, what)
    return _or_null(c, null) if null else c


BOOL = Check(lambda v: isinstance(v, bool), "true or false")
TEXT = Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def text(null: str | None = None) -> Check:
    return _or_null(TEXT, null) if null else TEXT


def one_of(names: Iterable[str], null: str | None = None) -> Check:
    names = list(names)
    c = Check(lambda v: isinstance(v, str) and v in names, f"one of {names}")
    return _or_null(c, null) if null else c


def either(*checks: Check) -> Check:
    return Check(lambda v: any(c.ok(v) for c in checks), ", or ".join(c.allowed for c in checks))
