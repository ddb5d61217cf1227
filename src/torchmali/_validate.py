"""Validation of the numeric arguments of ``odeint``: ``rtol``, ``atol`` and ``t``.

Every error names what was given and the fix (``rtol="1e-3"`` used to fail deep inside with
"could not convert string to float: 'e'").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import torch


def tolerance_values(value: object, name: str) -> float | list[float]:
    """Validate ``rtol`` / ``atol``: a number, or a sequence (1-D tensor) of numbers.

    Returns the float, or the list of floats (one per tensor of a tuple state).

    Raises:
        TypeError: not a number or a sequence of numbers.
        ValueError: NaN, infinite or negative values.
    """
    if isinstance(value, torch.Tensor):
        if (
            value.dim() > 1
            or value.is_complex()
            or not (value.is_floating_point() or value.dtype in _INT_DTYPES)
        ):
            raise TypeError(
                f"{name} must be a number or a 1-D tensor of numbers (one per tensor of a tuple "
                f"state), got a {value.dtype} tensor of shape {tuple(value.shape)}"
            )
        values: float | list[float] = (
            float(value) if value.dim() == 0 else [float(v) for v in value.detach().cpu()]
        )
    elif _is_real(value):
        values = float(value)  # type: ignore[arg-type]
    elif isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        value = list(value)
        for i, v in enumerate(value):
            if not _is_real(v):
                raise TypeError(
                    f"{name}[{i}] must be a number, got {_describe(v)}: pass one float per "
                    f"tensor of the tuple state, e.g. {name}=[1e-6, 1e-6]"
                )
        values = [float(v) for v in value]
    else:
        example = _EXAMPLE[name]
        if isinstance(value, str):
            try:
                example = repr(float(value))
            except ValueError:
                pass
        raise TypeError(
            f"{name} must be a number (or, for a tuple state, one number per tensor), got "
            f"{_describe(value)}: pass a float such as {name}={example}"
        )
    for v in values if isinstance(values, list) else [values]:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
    return values


def check_times(t: object) -> torch.Tensor:
    """``t`` as a non-empty 1-D real tensor (float64 unless it is floating point already).

    Raises:
        TypeError: not a tensor or a sequence of real numbers (complex, bool, str, None...).
        ValueError: not one-dimensional, or empty.
    """
    if not isinstance(t, torch.Tensor):
        if isinstance(t, str | bytes) or t is None:
            raise TypeError(
                f"t must be a 1-D tensor of times, got {_describe(t)}: pass e.g. "
                "t=torch.linspace(0, 1, 10)"
            )
        if _is_real(t):
            raise ValueError(
                f"t must be a 1-D tensor of times starting at the initial time, got the number "
                f"{t!r}: pass e.g. t=[0.0, {t!r}]"
            )
        try:
            items = list(t)  # type: ignore[call-overload]
        except TypeError as e:
            raise TypeError(
                f"t must be a 1-D tensor of times, got {type(t).__name__}: pass e.g. "
                "t=torch.linspace(0, 1, 10)"
            ) from e
        for i, v in enumerate(items):
            if not (_is_real(v) or (isinstance(v, torch.Tensor) and v.numel() == 1)):
                raise TypeError(f"t[{i}] must be a number (a time), got {_describe(v)}")
        t = torch.tensor([float(v) for v in items], dtype=torch.float64)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must hold real times, got a {t.dtype} tensor")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(
            f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}"
            + (": pass e.g. t=[0.0, 1.0]" if t.dim() == 0 else "")
        )
    return t if t.is_floating_point() else t.to(torch.float64)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_EXAMPLE = {"rtol": "1e-6", "atol": "1e-8"}


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _describe(v: object) -> str:
    if isinstance(v, str):
        return f"str {v!r}"
    return type(v).__name__ if v is not None else "None"
