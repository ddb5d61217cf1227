"""Fixed-grid Adams methods: Adams–Bashforth and Adams–Bashforth–Moulton (torchdiffeq's).

The solver state is the history of derivatives ``(f_n, f_{n-1}, ...)`` (newest first), a tuple of
tensors passed in and returned by every step — never kept in the solver object — so a step is a
pure function of ``(t0, h, y0, state)`` and a backward pass can replay it.

Semantics (torchdiffeq's ``explicit_adams`` / ``implicit_adams``): each step evaluates
``f(t_n, y_n)`` and prepends it to the history (at most ``max_order - 1`` entries). While the
history holds fewer than three derivatives the step is the 3/8-rule RK4; then it is the
Adams–Bashforth formula of order ``len(history)`` (the order ramps up to ``max_order - 1``),
and ``implicit_adams`` corrects it with the Adams–Moulton formula of one order more, solved by
functional iteration: at most ``max_iters`` evaluations at ``t_{n+1}``, stopped when two iterates
agree within the solve's ``rtol``/``atol`` (max norm). When the iteration does not converge, a
warning is issued and the oldest derivative is dropped (the order decreases by one).

The coefficients assume equally spaced steps, as torchdiffeq's: on a grid with unequal steps
(output times off the regular grid, a short last step) the formulas are applied with the current
step size and the accuracy drops to first order for that step.
"""

from __future__ import annotations

import functools
import warnings
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

from .base import Func, Solver, StepResult, evaluate
from .config import SolverOption, integer
from .explicit import RK4
from .tableau import explicit_step, lincomb

if TYPE_CHECKING:
    from ..step_size import Tolerance

#: The largest order of the corrector (torchdiffeq's ``_MAX_ORDER``).
MAX_ORDER = 12
#: Histories shorter than this use the RK4 start-up step (torchdiffeq's ``_MIN_ORDER - 1``).
_MIN_HISTORY = 3


def _integrate_lagrange(nodes: list[Fraction]) -> tuple[Fraction, ...]:
    """``∫_0^1 L_j(x) dx`` for the Lagrange basis polynomials ``L_j`` on ``nodes``."""
    weights = []
    for j, xj in enumerate(nodes):
        poly = [Fraction(1)]  # coefficients, lowest degree first
        denom = Fraction(1)
        for i, xi in enumerate(nodes):
            if i == j:
                continue
            poly = [Fraction(0)] + poly  # multiply by x ...
            for k in range(len(poly) - 1):
                poly[k] -= xi * poly[k + 1]  # ... minus xi
            denom *= xj - xi
        weights.append(sum(c / (k + 1) for k, c in enumerate(poly)) / denom)
    return tuple(weights)


@functools.cache
def bashforth(order: int) -> tuple[float, ...]:
    """Adams–Bashforth weights of ``f_n, f_{n-1}, ..., f_{n-order+1}`` (order ``order``)."""
    return tuple(float(w) for w in _integrate_lagrange([Fraction(-j) for j in range(order)]))


@functools.cache
def moulton(order: int) -> tuple[float, ...]:
    """Adams–Moulton weights of ``f_{n+1}, f_n, ..., f_{n-order+2}`` (order ``order``)."""
    return tuple(float(w) for w in _integrate_lagrange([Fraction(1 - j) for j in range(order)]))


class AdamsConvergenceWarning(UserWarning):
    """The Adams–Moulton functional iteration did not converge in ``max_iters`` iterations."""


def _max_order_check(key: str, value: Any) -> int:
    value = integer(1, MAX_ORDER)(key, value)
    if value < _MIN_HISTORY + 1:
        warnings.warn(
            f"options['max_order']={value} is below {_MIN_HISTORY + 1}: every step is the RK4 "
            "start-up step (the solver reduces to 'rk4')",
            stacklevel=2,
        )
    return value


class AdamsBashforthMoulton(Solver):
    """Adams–Bashforth predictor, Adams–Moulton corrector (torchdiffeq's ``implicit_adams``).

    Fixed grid only. Start-up: two 3/8-rule RK4 steps; then order ``min(n, max_order - 1)``
    predictor and one order more corrector. Evaluations per step: 4 during start-up, then
    ``1 + (corrector iterations)`` (at most ``1 + max_iters``). Gradients: any exact method
    differentiates the same operations (the history is the solver state); the iteration count
    is a constant of the discrete solve, like the step sizes.

    Options (``options=``): ``max_order`` (1..12, default 12), ``max_iters`` (>= 1, default 4).
    The corrector's convergence test uses the solve's ``rtol`` and ``atol``.

    Args:
        perturb: pass ``perturb=`` hints (``NEXT`` at ``t_n``, ``PREV`` at ``t_{n+1}``).
        tol: the solve's tolerances (for the corrector's convergence test).
        max_order: highest order of the corrector.
        max_iters: most corrector iterations per step.
    """

    name = "implicit_adams"
    order = 4
    adaptive = False
    uses_tolerance = True
    implicit = True
    solver_options = {
        "max_order": SolverOption(MAX_ORDER, _max_order_check, "highest order (1..12)"),
        "max_iters": SolverOption(4, integer(1), "most corrector iterations per step"),
    }

    def __init__(
        self,
        perturb: bool = False,
        tol: Tolerance | None = None,
        max_order: int = MAX_ORDER,
        max_iters: int = 4,
    ) -> None:
        self.perturb = bool(perturb)
        self.rtol = 1e-7 if tol is None else tol.rtol  # odeint's defaults
        self.atol = 1e-9 if tol is None else tol.atol
        self.max_order = integer(1, MAX_ORDER)("max_order", max_order)
        self.max_iters = integer(1)("max_iters", max_iters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_order={self.max_order}, max_iters={self.max_iters})"

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ()

    def step(
        self,
        f: Func,
        t0: float,
        h: float,
        y0: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        with_error: bool = False,
    ) -> StepResult:
        first, end = self.hints(with_error)
        f0 = evaluate(f, t0, y0, first)
        history = ((f0,) + tuple(state or ()))[: self.max_order - 1]
        order = len(history)
        if order < _MIN_HISTORY:
            y1, _ = explicit_step(RK4.tableau, f, t0, h, y0, f0, end)
            return StepResult(y1=y1, error=None, state1=history)
        zero = torch.zeros_like(y0)
        dy = lincomb(zero, h, bashforth(order), history)
        if self.implicit:
            weights = moulton(order + 1)
            delta = lincomb(zero, h, weights[1:], history)
            for _ in range(self.max_iters):
                dy_old = dy
                f1 = evaluate(f, t0 + h, y0 + dy, end)
                dy = torch.add(delta, f1, alpha=h * weights[0])
                if self._converged(dy_old, dy):
                    break
            else:
                warnings.warn(
                    f"{self.name}: the Adams–Moulton corrector did not converge in "
                    f"max_iters={self.max_iters} iterations on the step from t={t0:.6g} "
                    f"(h={h:.3g}); the solution may be inaccurate: reduce the step size or raise "
                    "options['max_iters']. The order drops by one.",
                    AdamsConvergenceWarning,
                    stacklevel=2,
                )
                history = history[:-1]
        return StepResult(y1=y0 + dy, error=None, state1=history)

    def _converged(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Max-norm test ``|a - b| < atol + rtol max(|a|, |b|)`` (torchdiffeq's)."""
        with torch.no_grad():
            a, b = a.detach(), b.detach()
            rtol, atol = _flat_tol(self.rtol, a), _flat_tol(self.atol, a)
            scale = torch.maximum(a.abs(), b.abs()) * rtol + atol
            return bool(((a - b).abs() / scale).max() < 1)


def _flat_tol(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A per-element tolerance of another state's size (the adjoint's) collapses to its minimum."""
    if isinstance(value, torch.Tensor) and value.shape != like.shape:
        return float(value.min())
    return value


class AdamsBashforth(AdamsBashforthMoulton):
    """Adams–Bashforth (torchdiffeq's ``explicit_adams``): the predictor alone.

    Fixed grid only. Start-up: two 3/8-rule RK4 steps, then the order ramps up to
    ``max_order - 1``. One evaluation per step after start-up (4 during it).

    Options (``options=``): ``max_order`` (1..12, default 12).
    """

    name = "explicit_adams"
    uses_tolerance = False
    implicit = False
    solver_options = {"max_order": AdamsBashforthMoulton.solver_options["max_order"]}

    def __init__(self, perturb: bool = False, max_order: int = MAX_ORDER) -> None:
        super().__init__(perturb=perturb, max_order=max_order)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_order={self.max_order})"
