"""Solver contracts.

A solver is an immutable object with a tiny contract, operating on one tensor state ``y`` and
float64 Python times:

* ``init(f, t0, y0) -> state``: the solver's auxiliary state at the start (for first-same-as-last
  Runge–Kutta methods the derivative ``f(t0, y0)``, for ALF the velocity ``v0``; ``None`` if the
  method carries nothing between steps).
* ``step(f, t0, h, y0, state, with_error=True) -> StepResult``: one step; it never chooses its
  own step size (fixed grids pass ``with_error=False``: no error estimate is computed).
* ``interpolate(t0, h, y0, step_result, t) -> y(t)`` for solvers with ``dense_output = True``.

The state may be ``None``, a tensor, or a tuple of tensors (multistep methods carry a history of
derivatives); every gradient method stores, replays and differentiates all three.

``f`` is called as ``f(t, y)`` or, for a stage exactly at the start or the end of a step, as
``f(t, y, perturb=p)`` with ``p = NEXT`` (+1) or ``PREV`` (-1): the wrapped right-hand side then
nudges the time by one ulp towards the inside of the step, so that a ``func`` discontinuous at a
grid point is evaluated on the correct side (torchdiffeq's ``Perturb``). ``Solver.hints`` says
which hints a step passes.

A reversible solver (:class:`ReversibleSolver`) adds its algebraic inverse, a fused backward
step (reconstruct the previous point and pull the cotangents back with one evaluation and one
vector–Jacobian product) and what a safety net needs to know about its round-off.

Every gradient method drives solvers through this contract only, so a step is a pure function of
``(t0, h, y0, state)`` and can be replayed exactly in a backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._vjp import add_into

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


@dataclass
class BackwardStep:
    """The result of :meth:`ReversibleSolver.backward_step`.

    Attributes:
        y0: the reconstructed state at the start of the step.
        state0: the reconstructed solver state there.
        cot_y0: the cotangent of ``y0``.
        cot_state0: the cotangent of ``state0`` (its structure; ``None`` for zero).
        param_grads: the step's vector–Jacobian product for each parameter (zeros when unused).
    """

    y0: torch.Tensor
    state0: Any
    cot_y0: torch.Tensor
    cot_state0: Any
    param_grads: list[torch.Tensor]


class ReversibleSolver(Solver):
    """A solver whose step has an exact algebraic inverse: the contract of ``gradient="mali"``.

    A reversible scheme implements :meth:`step` (forward), :meth:`inverse` (reconstruction, no
    graph) and :meth:`backward_step` (reconstruction fused with the step's vector–Jacobian product:
    one evaluation of ``f`` with graph and one VJP, the floor for a reversible backward pass), and
    states its round-off behaviour (:meth:`inverse_amplification`). Everything else has a working
    default: :meth:`reverse_sweep` drives ``backward_step`` over the grid (a scheme may return a
    faster sweep, as ALF does), and the hints name causes and fixes in MALI's warnings.

    Reversible schemes have no dense output (``dense_output = False``): the loop lands on every
    output time, where the backward sweep adds the output's cotangent.
    """

    reversible = True
    #: how the scheme is named in messages (default: ``name``).
    title: str = ""

    def inverse(
        self, f: Func, t1: float, h: float, y1: torch.Tensor, state1: Any
    ) -> tuple[torch.Tensor, Any]:
        """Undo ``step``: from ``(y1, state1)`` at ``t1`` recover ``(y0, state0)`` at ``t1 - h``."""
        raise NotImplementedError

    def backward_step(
        self,
        f: Func,
        t0: float,
        h: float,
        y1: torch.Tensor,
        state1: Any,
        cot_y1: torch.Tensor,
        cot_state1: Any,
        params: Sequence[torch.Tensor],
    ) -> BackwardStep:
        """Reverse the step from ``t0`` to ``t0 + h``: reconstruct its start from its end and pull
        the cotangents ``(cot_y1, cot_state1)`` back to it, with one evaluation of ``f`` (with
        graph) and one vector–Jacobian product with respect to the evaluation's input and
        ``params``. ``cot_state1`` has the structure of ``state1``, ``None`` standing for zero.
        Runs under ``no_grad``; enable grad around the evaluation.
        """
        raise NotImplementedError

    #: the consistency gap (``ReverseSweep.consistency``, ``SolveStats.parasitic``) above which
    #: ``Mali(parasitic_tol="auto")`` warns and recomputes exactly (see :meth:`consistency_limit`)
    consistency_tol: ClassVar[float] = 0.5

    def consistency_limit(self, ts: Sequence[float]) -> float:
        """The largest consistency gap of a healthy solve on the accepted grid ``ts``
        (``consistency_tol`` unless the scheme knows better)."""
        return self.consistency_tol

    def inverse_amplification(self) -> float:
        """The factor by which one inverse step can amplify round-off in the worst case (1 for a
        scheme whose inverse is as well conditioned as its step, e.g. undamped ALF; ALF with
        damping η: ``1/|1 - 2η|``). A safety net chooses its checkpoint interval from it."""
        return 1.0

    def reverse_sweep(
        self, f: Func, params: Sequence[torch.Tensor], y1: torch.Tensor, state1: Any
    ) -> ReverseSweep:
        """The backward sweep starting from the final point ``(y1, state1)``."""
        return ReverseSweep(self, f, params, y1, state1)

    def drift_hint(self) -> str:
        """Why reconstruction drifts with this scheme and the first fix (for MALI's message)."""
        amp = self.inverse_amplification()
        if amp > 1.0:
            return f"{self.label}'s inverse amplifies round-off by up to {amp:.3g} per step: use float64"
        return (
            f"{self.label}'s inverse step is exact, but it expands round-off wherever the "
            "dynamics contract: use float64"
        )

    def consistency_message(self, tol: float) -> str:
        """MALI's message when the scheme's consistency check (``ReverseSweep.consistency``)
        exceeds ``tol`` (``SolveStats.parasitic``)."""
        return (
            f"{self.label}'s consistency check at the final time exceeds parasitic_tol={tol:.3g} "
            "(SolveStats.parasitic): the forward solution is far from the ODE's (MALI's gradient "
            "is exact for this discrete solve, not for the ODE). Use a shorter horizon, a smaller "
            "step, or another solver with gradient='checkpoint'"
        )

    @property
    def label(self) -> str:
        """The scheme's name in messages."""
        return self.title or self.name


class ReverseSweep:
    """A reversible solver's backward sweep over its accepted grid, from the final point.

    The gradient method drives it from the last step to the first::

        sweep = solver.reverse_sweep(f, params, y_N, state_N)
        for i in reversed(range(N)):
            sweep.step(ts[i], ts[i + 1] - ts[i], cot)   # cot: outputs' cotangent at ts[i+1]
        y0, state0 = sweep.point()
        cot_y0, cot_state0 = sweep.cotangents()
        sweep.param_grads                                  # accumulated over the steps

    and may call ``point()``, ``cotangents()`` and ``restart(y, state[, cotangents])`` between
    steps: compare the reconstruction with a stored checkpoint and continue from it, or hand a
    segment to exact recomputation and continue with the cotangents it returns. This default
    applies :meth:`ReversibleSolver.backward_step` step by step; a scheme may override it with a
    faster recurrence over its own representation (see ALF's).

    Attributes:
        param_grads: the accumulated gradients of ``params``.
        checks_consistency: whether :meth:`consistency` measures anything for this scheme.
    """

    checks_consistency: bool = False

    def __init__(
        self,
        solver: ReversibleSolver,
        f: Func,
        params: Sequence[torch.Tensor],
        y1: torch.Tensor,
        state1: Any,
    ) -> None:
        self.solver, self.f, self.params = solver, f, tuple(params)
        self.y, self.state = y1, state1
        self.cot_y = torch.zeros_like(y1)
        self.cot_state: Any = None
        self.param_grads = [torch.zeros_like(p) for p in params]

    def step(self, t0: float, h: float, cot: torch.Tensor | None = None, start: Any = None) -> None:
        """Add ``cot`` (outputs at ``t0 + h``) to the cotangent of ``y``, then reverse the step
        from ``t0`` to ``t0 + h``.

        ``start``: the stored ``(y0, state0)`` at ``t0`` when the gradient method kept it (the
        initial point, a checkpoint), else ``None``. A scheme may take from it what it would
        otherwise evaluate (reversible Heun: ``f̂0``), but must still reconstruct ``y0`` and
        what the drift check compares."""
        cot_y = self.cot_y if cot is None else self.cot_y + cot
        r = self.solver.backward_step(
            self.f, t0, h, self.y, self.state, cot_y, self.cot_state, self.params
        )
        self.y, self.state, self.cot_y, self.cot_state = r.y0, r.state0, r.cot_y0, r.cot_state0
        add_into(self.param_grads, r.param_grads)

    def point(self) -> tuple[torch.Tensor, Any]:
        """The reconstructed ``(y, state)`` at the start of the last reversed step."""
        return self.y, self.state

    def restart(
        self, y: torch.Tensor, state: Any, cotangents: tuple[torch.Tensor, Any] | None = None
    ) -> None:
        """Continue from a stored ``(y, state)`` at the current point; with ``cotangents``
        (``(cot_y, cot_state)`` there), also replace the running cotangents — e.g. after a
        fallback reversed the preceding segment by exact recomputation instead."""
        self.y, self.state = y, state
        if cotangents is not None:
            self.cot_y, self.cot_state = cotangents[0].clone(), cotangents[1]

    def cotangents(self) -> tuple[torch.Tensor, Any]:
        """The cotangents of ``(y, state)`` at the current point (``None`` for a zero state
        cotangent)."""
        return self.cot_y, self.cot_state

    def consistency(self) -> list[torch.Tensor]:
        """Norms ``[gap, reference]`` of the scheme's consistency check of the final point (for
        ALF the parasitic mode, ``|v_N − f(t_N, z_N)|`` against ``|f(t_N, z_N)|``), measured
        during the sweep at no extra evaluation; empty when the scheme has no such check."""
        return []
