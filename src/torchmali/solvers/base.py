"""Solver contracts.

A solver is an immutable object with a tiny contract, operating on one tensor state ``y`` and
float64 Python times:

* ``init(f, t0, y0) -> state``: the solver's auxiliary state at the start (for first-same-as-last
  Runge–Kutta methods the derivative ``f(t0, y0)``, for ALF the velocity ``v0``; ``None`` if the
  method carries nothing between steps).
* ``step(f, t0, h, y0, state, with_error=True) -> StepResult``: one step; it never chooses its
  own step size (fixed grids pass ``with_error=False``: no error estimate is computed).
* ``interpolate(t0, h, y0, step_result, t) -> y(t)`` for solvers with ``dense_output = True``.

``f`` is called as ``f(t, y)`` or, for a stage exactly at the start or the end of a step, as
``f(t, y, perturb=p)`` with ``p = NEXT`` (+1) or ``PREV`` (-1): the wrapped right-hand side then
nudges the time by one ulp towards the inside of the step, so that a ``func`` discontinuous at a
grid point is evaluated on the correct side (torchdiffeq's ``Perturb``). ``Solver.hints`` says
which hints a step passes.

A reversible solver adds ``inverse(f, t1, h, y1, state1) -> (y0, state0)``.

Every gradient method drives solvers through this contract only, so a step is a pure function of
``(t0, h, y0, state)`` and can be replayed exactly in a backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

Func = Callable[..., torch.Tensor]
"""``f(t, y)`` or ``f(t, y, perturb=p)``: the right-hand side seen by a solver."""

#: ``perturb=`` hints (torchdiffeq's ``Perturb.PREV`` / ``Perturb.NEXT``).
PREV, NEXT = -1, 1


def evaluate(f: Func, t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
    """``f(t, y)``, passing ``perturb=`` only when it is not 0 (plain functions work as ``f``)."""
    return f(t, y) if perturb == 0 else f(t, y, perturb=perturb)


@dataclass
class StepResult:
    """The result of one solver step.

    Attributes:
        y1: the state at ``t0 + h``.
        error: the local error estimate (same shape as ``y1``), or ``None`` for fixed-grid methods.
        state1: the solver's auxiliary state at ``t0 + h`` (``None`` if it carries none).
        dense: whatever ``interpolate`` needs (e.g. the stages), or ``None``.
    """

    y1: torch.Tensor
    error: torch.Tensor | None
    state1: Any
    dense: Any = None


class Solver:
    """Base class of every solver.

    Class attributes:
        name: the ``method=`` string.
        order: the order of convergence of the method.
        adaptive: whether ``step`` returns an error estimate (the solver can run without
            ``step_size``).
        error_order: the exponent ``k`` of the step-size controller, ``factor ~ err^(-1/k)``
            (the order of the error estimate plus one).
        dense_output: whether ``interpolate`` is available; without it the integration loop shortens
            steps so that the grid lands on every output time.
        reversible: whether ``inverse`` is available (see :class:`ReversibleSolver`).
        forward_only: the solve runs outside autograd (``scipy_solver``): no gradient method
            applies.
        uses_tolerance: the constructor takes the solve's :class:`~torchmali.step_size.Tolerance`
            as ``tol=`` (e.g. the Adams corrector's convergence test).
        solver_options: the solver-specific ``options=`` keys, name ->
            :class:`~torchmali.solvers.config.SolverOption`; passed to the constructor.

    Instance attribute:
        perturb: ``options["perturb"]``: pass ``perturb=`` hints on fixed grids too.
    """

    name: str = ""
    order: int = 0
    adaptive: bool = False
    error_order: int = 0
    dense_output: bool = False
    reversible: bool = False
    forward_only: bool = False
    uses_tolerance: bool = False
    solver_options: ClassVar[Mapping[str, Any]] = {}
    perturb: bool = False

    def hints(self, with_error: bool) -> tuple[int, int]:
        """The ``perturb=`` hints ``(at t0, at t0 + h)`` of a step, as torchdiffeq passes them.

        An adaptive solve (``with_error``) evaluates stages at ``t0 + h`` just before it (the
        first stage is the previous step's last one); a fixed grid passes hints only with
        ``options={"perturb": True}``: ``NEXT`` at ``t0``, ``PREV`` at ``t0 + h``.
        """
        if with_error:
            return 0, PREV
        return (NEXT, PREV) if self.perturb else (0, 0)

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> Any:
        """Return the auxiliary state at the initial point (``None`` by default)."""
        return None

    def derivative(self, state: Any) -> torch.Tensor | None:
        """Return ``f(t, y)`` at the current point if the state holds it (used for the first step)."""
        return None

    def step(
        self, f: Func, t0: float, h: float, y0: torch.Tensor, state: Any, with_error: bool = True
    ) -> StepResult:
        """Advance ``y0`` from ``t0`` to ``t0 + h``; skip the error estimate if not ``with_error``."""
        raise NotImplementedError

    def interpolate(
        self, t0: float, h: float, y0: torch.Tensor, result: StepResult, t: float
    ) -> torch.Tensor:
        """Evaluate the continuous extension of a step at ``t`` in ``[t0, t0 + h]``."""
        raise NotImplementedError(f"solver {self.name!r} has no dense output")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReversibleSolver(Solver):
    """A solver whose step has an exact algebraic inverse."""

    reversible = True

    def inverse(
        self, f: Func, t1: float, h: float, y1: torch.Tensor, state1: Any
    ) -> tuple[torch.Tensor, Any]:
        """Undo ``step``: from ``(y1, state1)`` at ``t1`` recover ``(y0, state0)`` at ``t1 - h``."""
        raise NotImplementedError
