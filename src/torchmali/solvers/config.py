"""Solver-specific ``options=`` keys: each solver class declares its own names and defaults.

A solver lists them in ``solver_options`` (name -> :class:`SolverOption`); ``Options.parse``
accepts those keys for that method only (validated here), and ``odeint`` passes them to the
solver's constructor. Unknown keys stay an error that lists the valid ones for the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SolverOption:
    """One solver-specific option.

    Attributes:
        default: the value when the key is absent.
        check: ``check(key, value) -> value`` validates and converts a user's value; raises
            ``ValueError`` / ``TypeError`` whose message names the fix.
        doc: one line for error messages and docs.
    """

    default: Any
    check: Callable[[str, Any], Any]
    doc: str


def integer(low: int, high: int | None = None) -> Callable[[str, Any], int]:
    """A check accepting integers in ``[low, high]`` (``high=None``: no upper bound)."""

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise TypeError(f"options[{key!r}] must be an integer, got {value!r}")
        value = int(value)
        if value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"options[{key!r}] must be an integer {bound}, got {value}")
        return value

    return check


def positive_number(key: str, value: Any) -> float:
    """A check accepting a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"options[{key!r}] must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"options[{key!r}] must be a finite number > 0, got {value}")
    return value


def choice(values: Sequence[str]) -> Callable[[str, Any], str]:
    """A check accepting one of ``values`` (strings)."""

    def check(key: str, value: Any) -> str:
        if value not in values:
            raise ValueError(f"options[{key!r}] must be one of {list(values)}, got {value!r}")
        return value

    return check
