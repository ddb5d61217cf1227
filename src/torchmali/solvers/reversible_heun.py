"""The reversible Heun method (Kidger, Foster, Li & Lyons, NeurIPS 2021), ODE case.

Two tracks: the solution ``y`` and an auxiliary ``ŷ`` that carries the evaluation
``f̂ = f(t, ŷ)``; the solver state is ``(ŷ, f̂)``, initially ``(y0, f(t0, y0))``. One step from
``t0`` to ``t1 = t0 + h`` costs one evaluation of ``f``::

    ŷ1 = 2 y0 − ŷ0 + h f̂0
    f̂1 = f(t1, ŷ1)
    y1 = y0 + (h/2) (f̂0 + f̂1)

and has the exact algebraic inverse (one evaluation, at ``ŷ0``)::

    ŷ0 = 2 y1 − ŷ1 − h f̂1
    f̂0 = f(t0, ŷ0)
    y0 = y1 − (h/2) (f̂0 + f̂1)

Order 2. Adaptive stepping uses the free embedded estimate ``(h/2) (f̂1 − f̂0)`` (the difference
between the trapezoidal update and the explicit Euler update ``y0 + h f̂0``), with controller
exponent 1/2.

Stability (measured, see docs/gradients.md, "Reversible solvers"): on ``y' = λy`` the one-step
map of ``(y, ŷ)`` has determinant −1, like ALF with η = 1: stable only for ``hλ`` on the imaginary segment
``(−i, i)``; on dissipative modes the parasitic root (the ``ŷ − y`` direction) grows like
``e^{|λ| T}`` whatever the step. Its inverse amplifies round-off by no more than the step does
(:meth:`ReversibleHeun.inverse_amplification` is 1).

Backward pass (``gradient="mali"``): :class:`ReversibleHeunSweep` reverses a step with one
evaluation of ``f`` with graph (the reconstruction's, at ``ŷ0``) and one vector–Jacobian product
(at ``ŷ1``, through the evaluation the previous reversed step made): ``N`` evaluations for
``N`` steps (one at the final point; none at ``t0``, whose ``f̂0`` MALI keeps), one evaluation's
graph alive at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._vjp import add_into, vjp
from .base import BackwardStep, Func, ReverseSweep, ReversibleSolver, StepResult

State = tuple[torch.Tensor, torch.Tensor]


class ReversibleHeun(ReversibleSolver):
    """Reversible Heun: second order, one evaluation per step, algebraically reversible.

    Kidger, Foster, Li & Lyons, "Efficient and Accurate Gradients for Neural SDEs", NeurIPS 2021
    (the ODE case). Fixed grid (``options={"step_size": h}``) or adaptive (embedded Euler error
    estimate). With ``gradient="mali"`` the gradient equals direct backpropagation through the
    same steps up to reconstruction round-off, at memory ``N_z (N_f + 3)`` (the final ``y``,
    ``ŷ``, ``f̂``) plus the accepted times.

    Unstable on dissipative dynamics (``Re λ < 0``) like ALF with η = 1: use it on short horizons
    or on oscillatory / non-dissipative dynamics. ``SolveStats.parasitic`` reports
    ``|y_N − ŷ_N| / |y_N|`` (the parasitic mode's size) after a MALI backward pass.
    """

    name = "reversible_heun"
    title = "reversible Heun"
    order = 2
    adaptive = True
    error_order = 2

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> State:
        return (y0, f(t0, y0))

    def derivative(self, state: State) -> torch.Tensor:
        return state[1]

    def step(
        self,
        f: Func,
        t0: float,
        h: float,
        y0: torch.Tensor,
        state: State,
        with_error: bool = True,
    ) -> StepResult:
        yh0, f0 = state
        w = torch.add(y0, f0, alpha=0.5 * h)  # y0 + (h/2) f̂0, shared by ŷ1 and y1
        yh1 = torch.sub(w, yh0).add_(w)  # 2 y0 − ŷ0 + h f̂0
        f1 = f(t0 + h, yh1)
        y1 = w.add_(f1, alpha=0.5 * h)
        error = torch.sub(f1, f0).mul_(0.5 * h) if with_error else None
        return StepResult(y1=y1, error=error, state1=(yh1, f1), dense=None)

    def inverse(self, f: Func, t1: float, h: float, y1: torch.Tensor, state1: State):
        yh1, f1 = state1
        w, yh0 = _reconstruct(y1, yh1, f1, h)
        f0 = f(t1 - h, yh0)
        return w.sub_(f0, alpha=0.5 * h), (yh0, f0)

    def backward_step(
        self,
        f: Func,
        t0: float,
        h: float,
        y1: torch.Tensor,
        state1: State,
        cot_y1: torch.Tensor,
        cot_state1,
        params: Sequence[torch.Tensor],
    ) -> BackwardStep:
        """The self-contained reverse step: two evaluations (the VJP's at ``ŷ1`` with graph, the
        reconstruction's at ``ŷ0`` without). :class:`ReversibleHeunSweep` reuses the second as
        the next step's first, so a whole sweep costs one evaluation per step."""
        yh1, f1 = state1
        with torch.enable_grad():
            yh1_in = yh1.detach().requires_grad_(True)
            u = f(t0 + h, yh1_in)
        cot = _pull_back(u, yh1_in, params, h, cot_y1, cot_state1)
        w, yh0 = _reconstruct(y1, yh1, f1, h)
        f0 = f(t0, yh0)
        y0 = w.sub_(f0, alpha=0.5 * h)
        return BackwardStep(y0=y0, state0=(yh0, f0), cot_y0=cot[0], cot_state0=cot[1],
                            param_grads=cot[2])  # fmt: skip

    def reverse_sweep(
        self, f: Func, params: Sequence[torch.Tensor], y1: torch.Tensor, state1: State
    ) -> ReversibleHeunSweep:
        return ReversibleHeunSweep(self, f, params, y1, state1)

    def drift_hint(self) -> str:
        return (
            "Reversible Heun's inverse step is exact, but it expands round-off wherever the "
            "dynamics contract (SolveStats.parasitic measures the parasitic mode): use float64"
        )

    def consistency_message(self, tol: float) -> str:
        return (
            f"reversible Heun's parasitic mode |y_N - yhat_N| / |y_N| at the final time exceeds "
            f"parasitic_tol={tol:.3g} (SolveStats.parasitic): reversible Heun is unstable on "
            "dissipative dynamics, so the forward solution is far from the ODE's (MALI's gradient "
            "is exact for this discrete solve, not for the ODE). Use a shorter horizon, or "
            "another solver with gradient='checkpoint' or 'symplectic'"
        )


def _reconstruct(y1: torch.Tensor, yh1: torch.Tensor, f1: torch.Tensor, h: float):
    """``(w, ŷ0)`` with ``w = y1 − (h/2) f̂1 = y0 + (h/2) f̂0`` and ``ŷ0 = 2 w − ŷ1``; then
    ``y0 = w − (h/2) f̂0`` (the caller, in place on ``w``, once ``f̂0`` is known)."""
    w = torch.add(y1, f1, alpha=-0.5 * h)
    return w, torch.sub(w, yh1).add_(w)


def _pull_back(u, yh1_in, params, h, cot_y1, cot_state1):
    """The step's VJP given the graph ``u = f(t1, ŷ1)``: ``(ȳ0, (ŷ̄0, f̄0), θ̄)``.

    With ``(ȳ, ŷ̄, f̄)`` the cotangents of ``(y1, ŷ1, f̂1)``: ``c = f̄ + (h/2) ȳ`` is the total
    cotangent of the evaluation, ``a = ŷ̄ + Jᵀ c`` that of ``ŷ1``, and
    ``ȳ0 = ȳ + 2a``, ``ŷ̄0 = −a``, ``f̄0 = (h/2) ȳ + h a = (h/2) ȳ0``.
    """
    c_yh, c_f = (None, None) if cot_state1 is None else cot_state1
    a, p_bar, cot_y0 = _pull(u, yh1_in, params, h, cot_y1, c_f, c_yh, negated=False)
    return cot_y0, (a.neg_(), torch.mul(cot_y0, 0.5 * h)), p_bar


def _pull(u, yh1_in, params, h, cot_y1, c_f, c_yh, negated: bool):
    """``a`` (see :func:`_pull_back`), the parameter VJPs and ``ȳ0 = ȳ + 2a``; ``c_yh`` is the
    cotangent of ``ŷ1``, or its negation when ``negated`` (the sweep keeps ``−ŷ̄``)."""
    c = torch.mul(cot_y1, 0.5 * h) if c_f is None else torch.add(c_f, cot_y1, alpha=0.5 * h)
    a, *p_bar = vjp((u,), (yh1_in, *params), (c,))
    if c_yh is not None:
        a = a.sub_(c_yh) if negated else a.add_(c_yh)
    return a, list(p_bar), torch.add(cot_y1, a, alpha=2.0)


class ReversibleHeunSweep(ReverseSweep):
    """Reversible Heun's backward sweep: one evaluation with graph and one VJP per step.

    The reconstruction of step ``i`` evaluates ``f(t_i, ŷ_i)`` with its graph; that graph is the
    one the VJP of step ``i − 1`` needs (its end point), so it is kept until then — one
    evaluation's activations alive at a time. The first reversed step, and the first after each
    :meth:`restart`, evaluates ``f`` at its end point once more; a step whose start is a stored
    point (``start=``) takes ``f̂0`` from it instead of evaluating. Equal to applying
    :meth:`ReversibleHeun.backward_step` step by step (tested).

    Consistency check: ``|y_N − ŷ_N|`` against ``|y_N|`` (the parasitic mode), at no evaluation.
    """

    checks_consistency = True

    def __init__(self, solver, f: Func, params, y1: torch.Tensor, state1: State) -> None:
        super().__init__(solver, f, params, y1, state1)
        self.graph: tuple[torch.Tensor, torch.Tensor] | None = None  # (ŷ leaf, f(t, ŷ))
        self.neg_cot: tuple[torch.Tensor, torch.Tensor] | None = None  # (−ŷ̄, f̄), None: zero
        self.gaps = [torch.linalg.vector_norm(y1 - state1[0]), torch.linalg.vector_norm(y1)]

    def step(
        self, t0: float, h: float, cot: torch.Tensor | None = None, start: State | None = None
    ) -> None:
        cot_y = self.cot_y if cot is None else self.cot_y + cot
        (yh1, f1), y1 = self.state, self.y
        if self.graph is None:
            with torch.enable_grad():
                yh1_in = yh1.detach().requires_grad_(True)
                u = self.f(t0 + h, yh1_in)
        else:
            yh1_in, u = self.graph
            self.graph = None
        a_prev, c_f = (None, None) if self.neg_cot is None else self.neg_cot
        a, p_bar, cot_y0 = _pull(u, yh1_in, self.params, h, cot_y, c_f, a_prev, negated=True)
        del u, yh1_in  # free this evaluation's graph before the next one is built
        add_into(self.param_grads, p_bar)
        # the cotangents of (ŷ0, f̂0) are (−a, (h/2) ȳ0): kept as (a, (h/2) ȳ0) (one kernel less
        # per step), converted when asked for (cotangents())
        self.cot_y, self.neg_cot = cot_y0, (a, torch.mul(cot_y0, 0.5 * h))
        w, yh0 = _reconstruct(y1, yh1, f1, h)
        if start is not None:
            # a stored point (t0, or a checkpoint the sweep restarts from): its f̂0 needs no
            # evaluation, and no later step of this segment needs the graph
            f0 = start[1][1]
        else:
            with torch.enable_grad():
                yh0_in = yh0.detach().requires_grad_(True)
                u0 = self.f(t0, yh0_in)
            self.graph = (yh0_in, u0)
            f0 = u0.detach()
        self.y = w.sub_(f0, alpha=0.5 * h)
        self.state = (yh0, f0)

    def restart(self, y: torch.Tensor, state: State, cotangents=None) -> None:
        if cotangents is not None:
            if cotangents[1] is None:
                self.neg_cot = None
            else:
                c_yh, c_f = cotangents[1]
                zero = torch.zeros_like(y)
                self.neg_cot = (zero if c_yh is None else c_yh.neg(), zero if c_f is None else c_f)
        super().restart(y, state, None if cotangents is None else (cotangents[0], None))
        self.graph = None

    def cotangents(self) -> tuple[torch.Tensor, State | None]:
        if self.neg_cot is None:
            return self.cot_y, None
        a, c_f = self.neg_cot
        return self.cot_y, (a.neg(), c_f)

    def consistency(self) -> list[torch.Tensor]:
        return self.gaps
