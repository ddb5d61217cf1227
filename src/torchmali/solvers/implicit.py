"""Implicit Runge–Kutta methods on fixed grids (torchdiffeq master's ``fixed_grid_implicit``).

Fully implicit (FIRK: Gauss–Legendre, Radau IIA, implicit Euler / midpoint) and diagonally
implicit (DIRK: trapezoid, SDIRK2, TR-BDF2) tableaus, for stiff problems on a fixed grid.

Nonlinear solve (torchdiffeq master's): Broyden's method on the stage derivatives ``k`` (FIRK: all
stages at once; DIRK: one stage after the other), starting from ``k_i = f(t0, y0)`` with the
identity as the Jacobian estimate, stopped when the 2-norm of the residual
``k_i - f(t0 + c_i h, y0 + h Σ_j a_ij k_j)`` is below ``1e-8`` (``1e-6`` in float32; for a bfloat16/float16
``func``, whose state is integrated in float32, not below a quarter of its rounding of
``|f(t0, y0)|``), or after ``max_iters`` iterations (option, default 100) with a warning. The
Jacobian estimate is a dense ``(m, m)`` matrix with ``m`` the number of unknowns (``stages x
state size`` for FIRK, the state size for DIRK): memory and cost grow with its square and cube.

Gradients: ``direct`` differentiates the solver's own operations (Broyden's iterations
included); ``checkpoint`` and ``binomial`` recompute the same operations and give the same
gradient to round-off. The iteration count is a constant of the discrete solve, like the steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .base import Func, Solver, StepResult, evaluate
from .config import SolverOption, integer
from .tableau import lincomb


class ImplicitConvergenceWarning(UserWarning):
    """Broyden's iteration for the implicit stages did not converge in ``max_iters``."""


@dataclass(frozen=True)
class ImplicitTableau:
    """An implicit Runge–Kutta method.

    Attributes:
        c: the nodes, one per stage (the row sums of ``a``).
        a: the full ``s x s`` coefficient matrix, row by row.
        b: the weights.
        diagonal: DIRK (``a`` lower triangular, stages solved one after the other) instead of
            FIRK (all stages solved together).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    diagonal: bool = False

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or any(len(row) != s for row in self.a):
            raise ValueError("implicit tableau: c, b and every row of a need one entry per stage")
        for i, row in enumerate(self.a):
            if not math.isclose(sum(row), self.c[i], rel_tol=1e-12, abs_tol=1e-12):
                raise ValueError(f"implicit tableau: row {i} of a must sum to c[{i}]")
            if self.diagonal and any(row[i + 1 :]):
                raise ValueError("implicit tableau: a DIRK tableau must be lower triangular")
        if not math.isclose(sum(self.b), 1.0, rel_tol=1e-12):
            raise ValueError("implicit tableau: the weights b must sum to 1")

    def explicit_stage(self, i: int) -> bool:
        """A stage at ``c = 0`` with a zero row is ``f(t0, y0)`` itself."""
        return self.c[i] == 0.0 and not any(self.a[i])


def broyden(
    residual: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    max_iters: int,
    tol: float,
) -> tuple[torch.Tensor, bool]:
    """Solve ``residual(x) = 0`` (flat ``x``) by Broyden's method from the identity Jacobian.

    Returns ``(x, converged)``; stops early when the Jacobian estimate becomes singular.
    """
    r = residual(x)
    jac = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
    for _ in range(max_iters):
        if float(torch.linalg.vector_norm(r.detach())) < tol:
            return x, True
        try:
            dx = -torch.linalg.solve(jac, r)
        except torch.linalg.LinAlgError:
            return x, False
        x = x + dx
        r_new = residual(x)
        dr, r = r_new - r, r_new
        jac = jac + torch.outer(dr - jac @ dx, dx.conj()) / torch.vdot(dx, dx)
    return x, float(torch.linalg.vector_norm(r.detach())) < tol


def _tolerance(dtype: torch.dtype) -> float:
    real = torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype
    return {torch.float64: 1e-8, torch.float32: 1e-6}.get(real, 1e-3)


class ImplicitRungeKutta(Solver):
    """A fixed-grid implicit Runge–Kutta solver defined by an :class:`ImplicitTableau`.

    Evaluations per step: ``1 + Σ (iterations + 1)`` over the implicit stages (FIRK: ``s`` per
    iteration). Options (``options=``): ``max_iters`` (>= 1, default 100), Broyden iterations
    per solve.

    Args:
        perturb: pass ``perturb=`` hints (``NEXT`` at ``t0``, ``PREV`` at ``t0 + h``).
        max_iters: most Broyden iterations per nonlinear solve.
    """

    tableau: ImplicitTableau
    adaptive = False
    solver_options = {
        "max_iters": SolverOption(100, integer(1), "most Broyden iterations per nonlinear solve")
    }

    def __init__(self, perturb: bool = False, max_iters: int = 100) -> None:
        self.perturb = bool(perturb)
        self.max_iters = integer(1)("max_iters", max_iters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_iters={self.max_iters})"

    def step(
        self, f: Func, t0: float, h: float, y0: torch.Tensor, state: Any, with_error: bool = False
    ) -> StepResult:
        tab = self.tableau
        first, end = self.hints(with_error)
        f0 = evaluate(f, t0, y0, first)
        tol = _tolerance(y0.dtype)
        eval_dtype = getattr(f, "eval_dtype", y0.dtype)
        if eval_dtype != y0.dtype:
            # a bfloat16/float16 func (its state integrated in float32) rounds every derivative
            # to its own precision: the residual cannot go below that rounding of f0
            u = torch.finfo(eval_dtype).eps / 2
            tol = max(tol, u * float(torch.linalg.vector_norm(f0.detach())) / 4)

        def stage_f(i: int, y: torch.Tensor) -> torch.Tensor:
            if tab.c[i] == 1.0:
                return evaluate(f, t0 + h, y, end)
            return f(t0 + tab.c[i] * h, y)

        if tab.diagonal:
            ks, converged = self._dirk_stages(stage_f, h, y0, f0, tol)
        else:
            ks, converged = self._firk_stages(stage_f, h, y0, f0, tol)
        if not converged:
            warnings.warn(
                f"{self.name}: Broyden's iteration for the implicit stages did not converge in "
                f"max_iters={self.max_iters} iterations on the step from t={t0:.6g} (h={h:.3g}); "
                "the solution may be inaccurate: reduce the step size or raise "
                "options['max_iters']",
                ImplicitConvergenceWarning,
                stacklevel=2,
            )
        return StepResult(y1=lincomb(y0, h, tab.b, ks), error=None, state1=None)

    def _firk_stages(self, stage_f, h, y0, f0, tol):
        tab = self.tableau
        s, shape = len(tab.c), y0.shape

        def residual(x: torch.Tensor) -> torch.Tensor:
            ks = x.reshape(s, *shape).unbind(0)
            res = [ks[i] - stage_f(i, lincomb(y0, h, tab.a[i], ks)) for i in range(s)]
            return torch.stack(res).reshape(-1)

        x, converged = broyden(
            residual, f0.reshape(1, -1).expand(s, -1).reshape(-1), self.max_iters, tol
        )
        return list(x.reshape(s, *shape).unbind(0)), converged

    def _dirk_stages(self, stage_f, h, y0, f0, tol):
        tab = self.tableau
        ks: list[torch.Tensor] = []
        converged = True
        for i in range(len(tab.c)):
            if tab.explicit_stage(i):
                ks.append(f0)
                continue
            known = lincomb(y0, h, tab.a[i][:i], ks)
            aii = tab.a[i][i]

            def residual(k: torch.Tensor, i=i, known=known, aii=aii) -> torch.Tensor:
                k = k.reshape(y0.shape)
                return (k - stage_f(i, torch.add(known, k, alpha=h * aii))).reshape(-1)

            k, ok = broyden(residual, f0.reshape(-1), self.max_iters, tol)
            ks.append(k.reshape(y0.shape))
            converged = converged and ok
        return ks, converged


_R2, _R3, _R6, _R15 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0)


class ImplicitEuler(ImplicitRungeKutta):
    """Backward Euler. Order 1, L-stable; one implicit stage."""

    name = "implicit_euler"
    order = 1
    tableau = ImplicitTableau(c=(1.0,), a=((1.0,),), b=(1.0,))


class ImplicitMidpoint(ImplicitRungeKutta):
    """Implicit midpoint rule (Gauss–Legendre, 1 stage). Order 2, A-stable, symplectic."""

    name = "implicit_midpoint"
    order = 2
    tableau = ImplicitTableau(c=(0.5,), a=((0.5,),), b=(1.0,))


class Trapezoid(ImplicitRungeKutta):
    """Trapezoidal rule (Crank–Nicolson). Order 2, A-stable; one implicit stage (DIRK)."""

    name = "trapezoid"
    order = 2
    tableau = ImplicitTableau(c=(0.0, 1.0), a=((0.0, 0.0), (0.5, 0.5)), b=(0.5, 0.5), diagonal=True)


class GaussLegendre4(ImplicitRungeKutta):
    """Gauss–Legendre, 2 stages. Order 4, A-stable, symplectic.

    The second node is ``1/2 + √3/6`` (the row sum of ``a``); torchdiffeq's master lists
    ``1/2 - √3/6`` twice, which evaluates time-dependent ``func`` at the wrong time.
    """

    name = "gl4"
    order = 4
    tableau = ImplicitTableau(
        c=(0.5 - _R3 / 6, 0.5 + _R3 / 6),
        a=((0.25, 0.25 - _R3 / 6), (0.25 + _R3 / 6, 0.25)),
        b=(0.5, 0.5),
    )


class GaussLegendre6(ImplicitRungeKutta):
    """Gauss–Legendre, 3 stages. Order 6, A-stable, symplectic."""

    name = "gl6"
    order = 6
    tableau = ImplicitTableau(
        c=(0.5 - _R15 / 10, 0.5, 0.5 + _R15 / 10),
        a=(
            (5 / 36, 2 / 9 - _R15 / 15, 5 / 36 - _R15 / 30),
            (5 / 36 + _R15 / 24, 2 / 9, 5 / 36 - _R15 / 24),
            (5 / 36 + _R15 / 30, 2 / 9 + _R15 / 15, 5 / 36),
        ),
        b=(5 / 18, 4 / 9, 5 / 18),
    )


class RadauIIA3(ImplicitRungeKutta):
    """Radau IIA, 2 stages. Order 3, L-stable."""

    name = "radauIIA3"
    order = 3
    tableau = ImplicitTableau(
        c=(1 / 3, 1.0), a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)), b=(3 / 4, 1 / 4)
    )


class RadauIIA5(ImplicitRungeKutta):
    """Radau IIA, 3 stages. Order 5, L-stable (the method of Hairer & Wanner's RADAU5)."""

    name = "radauIIA5"
    order = 5
    tableau = ImplicitTableau(
        c=(0.4 - _R6 / 10, 0.4 + _R6 / 10, 1.0),
        a=(
            (11 / 45 - 7 * _R6 / 360, 37 / 225 - 169 * _R6 / 1800, -2 / 225 + _R6 / 75),
            (37 / 225 + 169 * _R6 / 1800, 11 / 45 + 7 * _R6 / 360, -2 / 225 - _R6 / 75),
            (4 / 9 - _R6 / 36, 4 / 9 + _R6 / 36, 1 / 9),
        ),
        b=(4 / 9 - _R6 / 36, 4 / 9 + _R6 / 36, 1 / 9),
    )


_G = (2.0 - _R2) / 2.0  # SDIRK2's γ = 1 - √2/2, also TR-BDF2's


class SDIRK2(ImplicitRungeKutta):
    """Two-stage singly diagonally implicit RK (Alexander). Order 2, L-stable."""

    name = "sdirk2"
    order = 2
    tableau = ImplicitTableau(
        c=(_G, 1.0), a=((_G, 0.0), (1 - _G, _G)), b=(1 - _G, _G), diagonal=True
    )


class TRBDF2(ImplicitRungeKutta):
    """TR-BDF2 (trapezoid then BDF2) as an ESDIRK. Order 2, L-stable."""

    name = "trbdf2"
    order = 2
    tableau = ImplicitTableau(
        c=(0.0, 2 * _G, 1.0),
        a=((0.0, 0.0, 0.0), (_G, _G, 0.0), (_R2 / 4, _R2 / 4, _G)),
        b=(_R2 / 4, _R2 / 4, _G),
        diagonal=True,
    )


IMPLICIT = (
    ImplicitEuler,
    ImplicitMidpoint,
    Trapezoid,
    GaussLegendre4,
    GaussLegendre6,
    RadauIIA3,
    RadauIIA5,
    SDIRK2,
    TRBDF2,
)
