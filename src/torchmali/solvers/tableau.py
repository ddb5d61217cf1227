"""Validated Butcher tableaus and the generic explicit Runge–Kutta step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import Func, Solver, StepResult, evaluate


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Attributes:
        c: the nodes ``c_i`` (``c[0] == 0``).
        a: the strictly lower-triangular rows ``a[i] = (a_i0, ..., a_i,i-1)``; ``a[0] == ()``.
        b: the weights of the propagated solution.
        b_error: weights of the error estimate ``h * sum(b_error_i k_i)`` (difference between the
            propagated solution and the embedded one), or ``None`` for a fixed-grid method.
        fsal: the last stage (at ``c = 1``) is carried to the next step as its first stage. It is
            ``f(t0 + h, y1)`` (first same as last) when the last row of ``a`` equals ``b``; for
            the other tableaus (``adaptive_heun``, ``fehlberg2``) it is ``f`` at the embedded
            solution, which torchdiffeq reuses all the same: so do we, to give its answers.
        c_mid: weights of ``y(t0 + h/2) ≈ y0 + h * sum(c_mid_i k_i)``: with them the step has
            torchdiffeq's dense output, the quartic through ``y0``, ``y1``, this mid-point value
            and the derivatives ``k_0``, ``k_last`` at both ends (``None``: no dense output).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    fsal: bool = False
    c_mid: tuple[float, ...] | None = None

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
        if self.fsal and self.c[-1] != 1.0:
            raise ValueError("tableau: a carried last stage must be at c = 1 (the step's end)")
        if self.c_mid is not None:
            if len(self.c_mid) != s:
                raise ValueError("tableau: c_mid must have one entry per stage")
            if not math.isclose(sum(self.c_mid), 0.5, rel_tol=1e-12):
                raise ValueError("tableau: the mid-point weights c_mid must sum to 1/2")
            if not self.fsal:
                raise ValueError("tableau: dense output needs the last stage at c = 1 (fsal)")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def last_is_y1(self) -> bool:
        """Whether the last stage is evaluated at ``y1`` (first same as last)."""
        return self.fsal and tuple(self.a[-1]) + (0.0,) == tuple(self.b)


def lincomb(y0: torch.Tensor, h: float, coeffs: Sequence[float], ks: Sequence[torch.Tensor]):
    """Return ``y0 + h * sum(coeffs[j] * ks[j])``, skipping zero coefficients.

    The increment is summed first and added to ``y0`` once (as torchdiffeq does): adding each
    stage to ``y0`` separately rounds the state once per stage, which in float32 drifts a slowly
    changing state measurably (an event time off by 1e-4 relative with rk4 at h = 0.01)."""
    terms = [(h * a, k) for a, k in zip(coeffs, ks, strict=False) if a != 0.0]
    if not terms:
        return y0
    if len(terms) == 1:
        return torch.add(y0, terms[0][1], alpha=terms[0][0])
    (c, k), *rest = terms
    inc = k * c
    for c, k in rest:
        inc = torch.add(inc, k, alpha=c)
    return y0 + inc


def quartic(
    y0: torch.Tensor,
    y1: torch.Tensor,
    y_mid: torch.Tensor,
    f0: torch.Tensor,
    f1: torch.Tensor,
    h: float,
    x: float,
) -> torch.Tensor:
    """The quartic through ``y0``, ``y_mid``, ``y1`` at ``x = 0, 1/2, 1`` with slopes ``h f0``,
    ``h f1`` at the ends, evaluated at ``x`` (torchdiffeq's dense output of its RK solvers)."""
    c4 = 2 * h * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    c3 = h * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c2 = h * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    inner = torch.add(c3, c4, alpha=x)
    inner = torch.add(c2, inner, alpha=x)
    inner = torch.add(f0 * h, inner, alpha=x)
    return torch.add(y0, inner, alpha=x)


def hermite(
    y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, h: float, x: float
) -> torch.Tensor:
    """The cubic Hermite interpolant through ``(y0, h f0)`` at ``x = 0`` and ``(y1, h f1)`` at
    ``x = 1``, evaluated at ``x``."""
    dy = y1 - y0
    c3 = h * (f0 + f1) - 2 * dy
    c2 = 3 * dy - h * (2 * f0 + f1)
    inner = torch.add(c2, c3, alpha=x)
    inner = torch.add(f0 * h, inner, alpha=x)
    return torch.add(y0, inner, alpha=x)


def explicit_step(
    tab: ButcherTableau,
    f: Func,
    t0: float,
    h: float,
    y0: torch.Tensor,
    k0: torch.Tensor,
    end_hint: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step of ``tab`` from ``(t0, y0)`` with first stage ``k0``: ``(y1, stages)``.

    Stages at ``c = 1`` are evaluated at ``t0 + h`` with the ``perturb=end_hint`` hint.
    """
    ks = [k0]
    yi = y0
    for i in range(1, tab.stages):
        yi = lincomb(y0, h, tab.a[i], ks)
        if tab.c[i] == 1.0:
            ks.append(evaluate(f, t0 + h, yi, end_hint))
        else:
            ks.append(f(t0 + tab.c[i] * h, yi))
    y1 = yi if tab.last_is_y1 else lincomb(y0, h, tab.b, ks)
    return y1, ks


class RungeKutta(Solver):
    """An explicit Runge–Kutta solver defined by a :class:`ButcherTableau`.

    Subclasses set ``tableau``, ``name``, ``order`` and (for adaptive methods) ``error_order``.

    Stages at ``c = 1`` are evaluated with the ``PREV`` hint in adaptive solves (and, with
    ``options={"perturb": True}``, on fixed grids, where the first stage is evaluated with
    ``NEXT`` instead of being carried over), as torchdiffeq does.

    Args:
        perturb: pass ``perturb=`` hints on fixed grids (``options["perturb"]``).
    """

    tableau: ButcherTableau

    def __init__(self, perturb: bool = False) -> None:
        self.perturb = bool(perturb)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            cls.adaptive = tab.b_error is not None
            if tab.c_mid is not None:
                cls.dense_output = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(perturb=True)" if self.perturb else super().__repr__()

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> Any:
        # Adaptive methods need f(t0, y0) for the initial step size; it doubles as stage 1.
        return f(t0, y0) if self.adaptive else None

    def derivative(self, state: Any) -> torch.Tensor | None:
        return state

    def step(
        self, f: Func, t0: float, h: float, y0: torch.Tensor, state: Any, with_error: bool = True
    ) -> StepResult:
        tab = self.tableau
        first, end = self.hints(with_error)
        k0 = state if state is not None and not first else evaluate(f, t0, y0, first)
        y1, ks = explicit_step(tab, f, t0, h, y0, k0, end)
        error = None
        if with_error and tab.b_error is not None:
            error = lincomb(torch.zeros_like(y0), h, tab.b_error, ks)
        state1 = ks[-1] if tab.fsal else None
        return StepResult(y1=y1, error=error, state1=state1, dense=ks)

    def interpolate(
        self, t0: float, h: float, y0: torch.Tensor, result: StepResult, t: float
    ) -> torch.Tensor:
        c_mid = self.tableau.c_mid
        if c_mid is None:
            return super().interpolate(t0, h, y0, result, t)
        ks = result.dense
        y_mid = lincomb(y0, h, c_mid, ks)
        return quartic(y0, result.y1, y_mid, ks[0], ks[-1], h, (t - t0) / h)
