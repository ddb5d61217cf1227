"""Validated Butcher tableaus and the generic explicit Runge–Kutta step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import Func, Solver, StepResult


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Attributes:
        c: the nodes ``c_i`` (``c[0] == 0``).
        a: the strictly lower-triangular rows ``a[i] = (a_i0, ..., a_i,i-1)``; ``a[0] == ()``.
        b: the weights of the propagated solution.
        b_error: weights of the error estimate ``h * sum(b_error_i k_i)`` (difference between the
            propagated solution and the embedded one), or ``None`` for a fixed-grid method.
        fsal: first-same-as-last: the last stage is ``f(t0 + h, y1)`` and is reused as the next
            step's first stage.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    fsal: bool = False

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s:
            raise ValueError("tableau: c, a and b must have one entry per stage")
        if self.c[0] != 0.0:
            raise ValueError("tableau: an explicit method has c[0] == 0")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau: row {i} of a must have {i} entries (explicit method)")
            if i and not math.isclose(sum(row), self.c[i], rel_tol=1e-12, abs_tol=1e-12):
                raise ValueError(f"tableau: row {i} of a must sum to c[{i}]")
        if not math.isclose(sum(self.b), 1.0, rel_tol=1e-12):
            raise ValueError("tableau: the weights b must sum to 1")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise ValueError("tableau: b_error must have one entry per stage")
            if abs(sum(self.b_error)) > 1e-12:
                raise ValueError("tableau: the error weights must sum to 0")
        if self.fsal and (tuple(self.a[-1]) + (0.0,) != tuple(self.b) or self.c[-1] != 1.0):
            raise ValueError("tableau: a FSAL method's last row of a must equal b, with c = 1")

    @property
    def stages(self) -> int:
        return len(self.c)


def lincomb(y0: torch.Tensor, h: float, coeffs: Sequence[float], ks: Sequence[torch.Tensor]):
    """Return ``y0 + h * sum(coeffs[j] * ks[j])``, skipping zero coefficients."""
    out = y0
    for a, k in zip(coeffs, ks, strict=False):
        if a != 0.0:
            out = torch.add(out, k, alpha=h * a)
    return out


class RungeKutta(Solver):
    """An explicit Runge–Kutta solver defined by a :class:`ButcherTableau`.

    Subclasses set ``tableau``, ``name``, ``order`` and (for adaptive methods) ``error_order``.
    """

    tableau: ButcherTableau

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            cls.adaptive = tab.b_error is not None

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> Any:
        # Adaptive methods need f(t0, y0) for the initial step size; it doubles as stage 1.
        return f(t0, y0) if self.adaptive else None

    def derivative(self, state: Any) -> torch.Tensor | None:
        return state

    def step(
        self, f: Func, t0: float, h: float, y0: torch.Tensor, state: Any, with_error: bool = True
    ) -> StepResult:
        tab = self.tableau
        ks = [state if state is not None else f(t0, y0)]
        for i in range(1, tab.stages):
            yi = lincomb(y0, h, tab.a[i], ks)
            ks.append(f(t0 + tab.c[i] * h, yi))
        if tab.fsal:
            y1 = yi  # the last stage was evaluated at y1 (a[-1] == b)
        else:
            y1 = lincomb(y0, h, tab.b, ks)
        error = None
        if with_error and tab.b_error is not None:
            error = lincomb(torch.zeros_like(y0), h, tab.b_error, ks)
        if tab.fsal:
            state1 = ks[-1]
        else:
            state1 = None
        return StepResult(y1=y1, error=error, state1=state1, dense=ks)
