"""MALI's safety net: the checkpoint interval that bounds reconstruction round-off, the interval a
memory budget allows, and the exact recomputation of a segment whose reconstruction drifted.

Round-off model. Reversing ``K`` steps from an exact stored point, a scheme whose inverse
amplifies round-off by ``ρ`` per step (:meth:`ReversibleSolver.inverse_amplification`) ends with
a relative error of about ``C ε (ρ^K − 1)/(ρ − 1)`` (``ε`` the dtype's machine epsilon, ``C`` the
few roundings per step and the dynamics' own growth over the segment; :data:`ROUNDINGS`). The
interval :func:`drift_interval` is the largest ``K`` keeping that below ``drift_tol``. For
``ρ <= 1`` (undamped ALF, reversible Heun) the scheme adds no amplification: the drift then grows
only where the dynamics contract, at a rate no a-priori bound knows, so no interval is imposed
and the measured drift decides.

What the bound cannot know (the dynamics' contraction, a parasitic mode, a coarse constant) is
measured: every segment's reconstructed start is compared with the stored point, and a segment
whose drift exceeds ``drift_tol`` is reversed again exactly by :func:`replay_segment` (forward
recomputation from the stored point, one graph per step) — with at most the slots a memory budget
leaves free, Griewank's binomial schedule inside the segment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._loop import Problem, StepRecord
from .._vjp import add_into
from ._replay import autograd_step_vjp
from .binomial import optimal_split

#: ``C`` of the round-off model: roundings per inverse step and the dynamics' growth over a
#: segment. Measured (``benchmarks/reversible_stability.py``, damped ALF η = 0.55–0.95, K = 2–40,
#: a tanh MLP and a linear field, float32 and float64): ``C`` between 0.07 and 6.4.
ROUNDINGS = 10.0


def drift_interval(amplification: float, dtype: torch.dtype, drift_tol: float | None) -> int | None:
    """The largest number of inverse steps between stored points that keeps the modelled drift
    ``C ε (ρ^K − 1)/(ρ − 1)`` below ``drift_tol``; ``None`` (no interval needed) for ``ρ <= 1``
    or when the drift is not checked."""
    rho = float(amplification)
    if drift_tol is None or not rho > 1.0:
        return None
    eps = torch.finfo(dtype).eps
    growth = 1.0 + drift_tol * (rho - 1.0) / (ROUNDINGS * eps)
    return max(1, int(math.log(growth) / math.log(rho)))


def budget_interval(n_steps: int, slots: int) -> int | None:
    """The smallest interval ``K`` storing at most ``slots`` intermediate points over
    ``n_steps`` steps (points ``K, 2K, … < n_steps``); ``None`` when no point fits or none is
    needed."""
    if slots < 1 or n_steps <= 1:
        return None
    return (n_steps - 1) // (slots + 1) + 1


def coarsest(*intervals: int | None) -> int | None:
    """The coarsest of several intervals (``None``, no intermediate points, is the coarsest)."""
    if any(k is None for k in intervals):
        return None
    return max(intervals)  # type: ignore[type-var]


def replay_segment(
    problem: Problem,
    record: StepRecord,
    lo: int,
    hi: int,
    start: tuple[torch.Tensor, Any],
    cotangents: tuple[torch.Tensor, Any],
    output_cot: dict[int, torch.Tensor],
    params: Sequence[torch.Tensor],
    slots: int | None,
) -> tuple[torch.Tensor, Any, list[torch.Tensor], int]:
    """Reverse steps ``lo..hi-1`` exactly: recompute them forward from the stored ``start`` and
    pull ``cotangents`` (at ``ts[hi]``) back with one graph per step (``autograd_step_vjp``).

    ``slots``: extra points that may be kept at once (``None``: no limit, store the whole
    segment); fewer than the segment needs means Griewank's binomial schedule inside it.
    Returns ``(cot_y, cot_state, param_grads, recomputed_steps)`` at ``ts[lo]``.
    """
    ts = record.ts
    cot_y, cot_s = cotangents
    grads = [torch.zeros_like(p) for p in params]
    recomputed = 0

    def advance(a: int, b: int, y: torch.Tensor, s: Any) -> tuple[torch.Tensor, Any]:
        nonlocal recomputed
        for i in range(a, b):
            r = problem.step(ts[i], ts[i + 1] - ts[i], y, s)
            y, s = r.y1, r.state1
        recomputed += b - a
        return y, s

    def reverse_step(i: int, y: torch.Tensor, s: Any) -> None:
        nonlocal cot_y, cot_s
        h = ts[i + 1] - ts[i]
        c = output_cot.get(i)
        outputs = () if c is None else ((ts[i] + h, c),)
        cot_y, cot_s, g = autograd_step_vjp(problem, ts[i], h, y, s, cot_y, cot_s, outputs, params)
        add_into(grads, g)

    with torch.no_grad():
        if slots is None or slots >= hi - lo - 1:
            points = [start]
            for i in range(lo, hi - 1):
                points.append(advance(i, i + 1, *points[-1]))
            for i in range(hi - 1, lo - 1, -1):
                reverse_step(i, *points.pop())
        else:
            _revolve(lo, hi, start, slots, advance, reverse_step)
    return cot_y, cot_s, grads, recomputed


def _revolve(
    lo: int,
    hi: int,
    start: tuple[torch.Tensor, Any],
    slots: int,
    advance: Callable,
    reverse_step: Callable,
) -> None:
    """Binomial checkpointing of ``lo..hi-1`` with ``slots`` points besides ``start`` (an
    explicit stack instead of recursion, so long segments cannot hit the recursion limit)."""
    stack = [(lo, hi, start, slots)]
    while stack:
        a, b, (y, s), free = stack.pop()
        if b - a == 1:
            reverse_step(a, y, s)
        elif free == 0:
            for i in range(b - 1, a - 1, -1):
                reverse_step(i, *advance(a, i, y, s))
        else:
            m = a + optimal_split(b - a, free + 1)
            stack.append((a, m, (y, s), free))  # reversed after [m, b), when m's point is freed
            stack.append((m, b, advance(a, m, y, s), free - 1))
