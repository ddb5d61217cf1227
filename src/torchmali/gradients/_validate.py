"""Validation of the gradient-method configuration objects: one message style for every field.

Each message names the class, the field, what is expected, what was given (value and type) and an
example of a valid call, e.g. ``Binomial(checkpoints=...): checkpoints must be an integer >= 1,
got 'a' (str); e.g. Binomial(checkpoints=8)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def integer(owner: str, name: str, value: Any, example: str, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum`` (an integral float such as ``8.0`` is accepted)."""
    ok = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not ok or int(value) < minimum:
        raise (ValueError if ok and not isinstance(value, bool) else TypeError)(
            f"{owner}({name}=...): {name} must be an integer >= {minimum}, {_got(value)}; "
            f"e.g. {example}"
        )
    return int(value)


def number(owner: str, name: str, value: Any, example: str, *, positive: bool = True) -> float:
    """``value`` as a finite float, ``> 0`` (``positive``) or ``>= 0``."""
    bound = "> 0" if positive else ">= 0"
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number:
        raise TypeError(
            f"{owner}({name}=...): {name} must be a finite number {bound}, {_got(value)}; "
            f"e.g. {example}"
        )
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(
            f"{owner}({name}=...): {name} must be a finite number {bound}, {_got(value)}; "
            f"e.g. {example}"
        )
    return v


def choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = " or ".join(repr(c) for c in choices)
        raise (ValueError if isinstance(value, str) else TypeError)(
            f"{owner}({name}=...): {name} must be {options}, {_got(value)}; "
            f"e.g. {owner}({name}={choices[0]!r})"
        )
    return value
