"""The symplectic adjoint (Matsubara, Miyatake & Yaguchi, NeurIPS 2021) for explicit RK solvers.

A Runge–Kutta step with tableau ``(a, b, c)`` maps ``y0`` (and, for first-same-as-last methods,
the derivative ``k_1`` carried in the solver state) to ``y1`` through the stages

    X_i = y0 + h sum_{j<i} a_ij k_j,    k_i = f(t0 + c_i h, X_i),    y1 = y0 + h sum_j b_j k_j.

Its vector–Jacobian product is the discrete adjoint recursion, run over the stages in reverse:

    k̄_j = h b_j ȳ1 + h sum_{i>j} a_ij X̄_i  (+ the cotangents of dense outputs and of the FSAL state)
    X̄_i = (∂f/∂X (X_i))ᵀ k̄_i,   θ̄ += (∂f/∂θ (X_i))ᵀ k̄_i,   ȳ0 = ȳ1 + sum_i X̄_i.

Dividing by ``b_i`` turns it into the "symplectic partner" Runge–Kutta method of the paper (the
adjoint system integrated with the tableau ``b_j a_ji / b_i``); written with the stage cotangents
``k̄`` instead, as here, it needs no division and holds for stages with ``b_i = 0`` (dopri5's and
tsit5's FSAL stage, midpoint's first stage). It is the exact derivative of the step, so the
gradient equals direct backpropagation through the same discrete solve to round-off, and nothing
is reconstructed backwards in time.

Memory: the stage values ``X_1..X_s`` of one step are recomputed without graph, then ``f`` is
evaluated with graph at one stage at a time and its graph freed after its VJP — one evaluation's
activations alive at any time instead of a whole step's (``checkpoint``) or a whole solve's
(``direct``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._loop import Problem, StepRecord
from .._solution import SolveStats
from .._vjp import add_into, vjp
from ..solvers import SOLVERS
from ..solvers.base import Solver
from ..solvers.tableau import RungeKutta
from . import _validate
from ._replay import ReplayMethod, ReplayTape
from .base import register
from .binomial import _BinomialTape
from .checkpoint import _CheckpointTape


def symplectic_step_vjp(
    problem: Problem,
    t0: float,
    h: float,
    y0: torch.Tensor,
    state0: Any,
    cot_y1: torch.Tensor,
    cot_state1: Any,
    outputs: Sequence[tuple[float, torch.Tensor]],
    params: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, Any, list[torch.Tensor]]:
    """Pull the cotangents at the end of one accepted explicit Runge–Kutta step back to its start,
    stage by stage, with the graph of one evaluation of ``func`` alive at a time.

    The stage values ``X_i`` are recomputed without graph by the solver's own ``step`` (so every
    evaluation sees exactly the times and arguments of the forward pass); then for ``i = s..1``
    ``f(X_i)`` is evaluated with graph, its VJP taken with the stage cotangent of the discrete
    adjoint recursion (see the module docstring) and the graph freed. The last stage's value is
    never needed, so it is not recomputed unless a dense output falls inside the step; a stage
    that holds the solver state (``k_1`` of a first-same-as-last method) is not evaluated at all:
    its cotangent is returned as ``cot_state0``. Cost: at most ``s - 1`` evaluations without
    graph, ``s`` (or ``s - 1``) with graph and as many VJPs.

    Args:
        problem: the solve; ``problem.solver`` must be a :class:`RungeKutta` solver.
        t0, h: the step (normalised, increasing time).
        y0, state0: the state and solver state at ``t0`` (``state0``: ``None`` or ``k_1``).
        cot_y1: the cotangent of ``y1``.
        cot_state1: the cotangent of the solver state at ``t0 + h`` (``None``: none; ignored when
            the step carries no state, i.e. for a method that is not first-same-as-last).
        outputs: ``(t_k, cotangent of y(t_k))`` for every requested output in ``(t0, t0 + h]``;
            ``t_k == t0 + h`` means ``y1``, otherwise ``y(t_k)`` is the solver's dense output.
        params: the tensors to differentiate.

    Returns:
        ``(cot_y0, cot_state0, param_grads)``: ``cot_state0`` is ``None`` when ``state0`` is not
        a tensor; ``param_grads[j]`` is the VJP for ``params[j]`` (zeros when unused).
    """
    solver = problem.solver
    tab = solver.tableau
    s = tab.stages
    # Outputs at the end of the step are y1; the others are dense output inside the step.
    cot_y1 = cot_y1.clone()
    inside = []
    for tk, g in outputs:
        if _at_end(problem, t0, h, tk):
            cot_y1.add_(g)
        else:
            inside.append((tk, g))
    first = 1 if isinstance(state0, torch.Tensor) else 0  # stage 1 is the given state

    calls, ks = _recompute_stages(problem, t0, h, y0, state0, keep_values=bool(inside))

    # Direct cotangents of the stage derivatives k_j: y1 = y0 + h sum_j b_j k_j, and (FSAL)
    # state1 = k_s.
    kbar: list[torch.Tensor | None] = [None] * s
    for j, bj in enumerate(tab.b):
        if bj != 0.0:
            kbar[j] = cot_y1 * (h * bj)
    if tab.fsal and isinstance(cot_state1, torch.Tensor):
        _acc(kbar, s - 1, cot_state1, 1.0)
    cot_y0 = cot_y1
    if inside:
        cot_y0 = cot_y0 + _dense_vjp(problem, t0, h, y0, state0, ks, inside, kbar, first)
        ks = None

    # The adjoint recursion over the stages in reverse: one evaluation's graph at a time.
    cot_state0 = None
    param_grads = [torch.zeros_like(p) for p in params]
    for i in range(s - 1, -1, -1):
        g = kbar[i]
        kbar[i] = None
        if i < first:
            cot_state0 = g if g is not None else torch.zeros_like(state0)
            continue
        t, kwargs, x = calls[i - first]
        calls[i - first] = None  # free the stage value once used
        if g is None:
            continue  # no cotangent reaches this stage (the last one, at the end of a solve)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            k = problem.f(t, x_in, **kwargs)
        x_bar, *p_bar = vjp((k,), (x_in, *params), (g,))
        del k, x_in
        add_into(param_grads, p_bar)
        cot_y0.add_(x_bar)
        for j, a in enumerate(tab.a[i]):
            if a != 0.0:
                _acc(kbar, j, x_bar, h * a)
    return cot_y0, cot_state0, param_grads


def _acc(kbar: list, j: int, value: torch.Tensor, coeff: float) -> None:
    """``kbar[j] += coeff * value`` (a fresh tensor the first time, in place after)."""
    if kbar[j] is None:
        kbar[j] = value * coeff if coeff != 1.0 else value.clone()
    else:
        kbar[j].add_(value, alpha=coeff)


def _at_end(problem, t0: float, h: float, tk: float) -> bool:
    """Whether output time ``tk`` is the step's end point (``t0 + h`` up to the rounding of
    ``h = t1 - t0``); a solve that lands on its outputs only has outputs there (fixed grids
    of non-reversible solvers interpolate between their points, as in torchdiffeq)."""
    if problem.interp_mode == "land":
        return True
    t1 = t0 + h
    return abs(tk - t1) <= 4 * math.ulp(max(abs(t0), abs(t1)))


def _recompute_stages(problem, t0, h, y0, state0, keep_values):
    """Run the solver's own step without graph and capture the evaluations it makes.

    Returns ``calls`` — ``(t, kwargs, X)`` for every evaluated stage, in stage order — and, when
    ``keep_values``, the values ``k`` of those stages (else ``None``). Without ``keep_values`` the
    last stage is not evaluated (its value is not needed by the recursion): the step receives
    zeros, and its ``y1`` is then wrong but unused.
    """
    tab = problem.solver.tableau
    expected = tab.stages - (1 if isinstance(state0, torch.Tensor) else 0)
    calls: list = []
    ks: list[torch.Tensor] = []

    def capture(t, x, **kwargs):
        calls.append((t, kwargs, x))
        if len(calls) == expected and not keep_values:
            return torch.zeros_like(x)
        k = problem.f(t, x, **kwargs)
        if keep_values:
            ks.append(k)
        return k

    with torch.no_grad():
        problem.solver.step(capture, t0, h, y0, state0, with_error=problem.adaptive_steps)
    if len(calls) != expected:
        raise RuntimeError(
            f"gradient='symplectic': solver {problem.solver.name!r} evaluated func {len(calls)} "
            f"times in one step, but its tableau has {tab.stages} stages ({expected} evaluated "
            "when the solver state holds the first): its step does not follow its tableau; use "
            "gradient='checkpoint' with this solver"
        )
    return calls, (ks if keep_values else None)


def _dense_vjp(problem, t0, h, y0, state0, ks, inside, kbar, first) -> torch.Tensor:
    """Add the cotangents of the dense outputs inside the step to ``kbar``; return their
    cotangent of ``y0``.

    The continuous extension is linear in ``y0`` and the stage derivatives: replay the step with
    a ``func`` that returns the recomputed ``k_i`` as leaves (no evaluation), interpolate, and
    take the VJP of that linear graph.
    """
    solver = problem.solver
    with torch.enable_grad():
        y_in = y0.detach().requires_grad_(True)
        leaves = [k.detach().requires_grad_(True) for k in ks]
        if first:
            leaves.insert(0, state0.detach().requires_grad_(True))
        stage = iter(leaves[first:])
        result = solver.step(lambda t, x, **kw: next(stage), t0, h, y_in, leaves[0] if first else None,
                             with_error=False)  # fmt: skip
        ys = [problem.interpolate(t0, h, y_in, result, tk) for tk, _ in inside]
    y_bar, *k_bars = vjp(ys, (y_in, *leaves), [g for _, g in inside])
    for j, g in enumerate(k_bars):
        _acc(kbar, j, g, 1.0)
    return y_bar


@register
@dataclass(frozen=True)
class Symplectic(ReplayMethod):
    """The symplectic adjoint (Matsubara, Miyatake & Yaguchi, NeurIPS 2021) for every explicit
    Runge–Kutta solver, fixed or adaptive.

    The forward pass runs under ``no_grad`` and stores each accepted step's starting state (and
    the FSAL derivative), as ``checkpoint`` does. The backward pass differentiates each step stage
    by stage: it recomputes the stage values ``X_1..X_s`` without graph, then for ``i = s..1``
    evaluates ``f(X_i)`` with graph, takes its VJP with the stage cotangent given by the discrete
    adjoint recursion (the adjoint integrated with the symplectic partner of the forward tableau)
    and frees it.

    Gradient: identical to direct backpropagation through the accepted steps, dense output
    included (round-off; nothing is reconstructed backwards in time, so it is as stable as the
    forward solve). Memory: ``N_z (N_t + 2 s) + N_f`` — one state per step, the stage values of
    one step and their cotangents, and the graph of **one** evaluation of ``func`` (checkpointing
    keeps the graph of all ``s`` stages of a step at once). ``SolveStats.memory_bytes`` counts
    the stored states, the ``2 s`` stage buffers and the step record. Cost per step: ``s - 1``
    evaluations without graph, ``s`` with graph (``s - 1`` for first-same-as-last methods, whose
    first stage is the carried derivative) and as many VJPs; all are counted in
    ``SolveStats.nfe_backward``.

    With ``checkpoints=K`` the states are stored as ``binomial`` stores them (at most ``K`` at
    once, segments recomputed without graph by the optimal schedule) and each step is then
    differentiated stage by stage: memory ``N_z (K + 2 s) + N_f``, for the recomputation counts
    of :class:`~torchmali.gradients.Binomial` (reported the same way).

    Requires an explicit Runge–Kutta solver (``euler``, ``midpoint``, ``heun``, ``rk4``,
    ``adaptive_heun``, ``bosh3``, ``dopri5``, ``tsit5``, ...); ALF uses ``gradient="mali"``.
    Reference: T. Matsubara, Y. Miyatake, T. Yaguchi, "Symplectic Adjoint Method for Exact
    Gradient of Neural ODE with Minimal Memory", NeurIPS 2021.

    Args:
        checkpoints: ``None`` (default) stores one state per accepted step; an integer ``K >= 1``
            stores at most ``K`` states (binomial checkpointing).
    """

    name = "symplectic"
    aliases = ("symplectic_adjoint",)
    checkpoints: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoints is not None:
            k = _validate.integer(
                "Symplectic", "checkpoints", self.checkpoints, "Symplectic(checkpoints=8)"
            )
            object.__setattr__(self, "checkpoints", k)

    def check(self, solver: Solver, problem_is_fixed: bool) -> None:
        if not isinstance(solver, RungeKutta) or getattr(solver, "tableau", None) is None:
            rk = sorted(n for n, c in SOLVERS.items() if issubclass(c, RungeKutta))
            raise ValueError(
                f"gradient='symplectic' needs an explicit Runge–Kutta solver, one of {rk} (got "
                f"method={solver.name!r}); for this solver use gradient='checkpoint' or "
                "'binomial' (exact for every solver)"
                + (", or 'mali' (reversible)" if solver.reversible else "")
            )

    def tape(self, problem: Problem, stats: SolveStats) -> ReplayTape:
        """Checkpointing's storage (one state per step), or binomial's with ``checkpoints``."""
        if self.checkpoints is None:
            return _SymplecticTape(self, problem, stats)
        return _SymplecticBinomialTape(self, problem, stats)

    def step_vjp(self, problem, t0, h, y0, state0, cot_y1, cot_state1, outputs, params):
        """The stage-wise step VJP, :func:`symplectic_step_vjp`."""
        return symplectic_step_vjp(problem, t0, h, y0, state0, cot_y1, cot_state1, outputs, params)


def _stage_bytes(problem: Problem, y: torch.Tensor) -> int:
    """Bytes of the stage values of one step and their cotangents (``2 s`` states)."""
    return 2 * problem.solver.tableau.stages * y.numel() * y.element_size()


class _SymplecticTape(_CheckpointTape):
    """Checkpointing's tape; the reported memory adds the ``2 s`` stage buffers."""

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        return super().finish(ys, y_n, state_n, record) + _stage_bytes(self.problem, y_n)


class _SymplecticBinomialTape(_BinomialTape):
    """Binomial checkpointing's tape; the reported memory adds the ``2 s`` stage buffers."""

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        return super().finish(ys, y_n, state_n, record) + _stage_bytes(self.problem, y_n)
