"""Binomial checkpointing (Griewank's "revolve"): at most K stored states, segments recomputed."""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import torch

from .._loop import integrate
from ..step_size import fixed_grid
from ._backward import (
    Context,
    FunctionMethod,
    output_cotangents,
    preserve_buffers,
    refuse_double_backward,
)
from ._memory import tensor_bytes
from .base import register
from .checkpoint import Adjoint, step_vjp


def revolve_cost(n_steps: int, checkpoints: int) -> int:
    """The minimal number of forward steps to reverse ``n_steps`` with ``checkpoints`` stored
    states (the initial one included), counting the sweep that places the first checkpoints:
    ``t n − C(K + t, t − 1)`` with ``t`` the smallest integer such that ``C(K + t, t) >= n``
    (Griewank & Walther 2000, binomial checkpointing)."""
    n, k = n_steps, checkpoints
    if n <= 1:
        return 0
    if k == 1:
        return n * (n - 1) // 2
    t = 0
    while comb(k + t, k) < n:
        t += 1
    return t * n - comb(k + 1 + t - 1, k + 1)


def optimal_split(n: int, k: int) -> int:
    """An optimal position ``m`` (1 <= m < n) of the next checkpoint for ``n`` steps, ``k`` slots.

    The cost ``m + r(n − m, k − 1) + r(m, k)`` is unimodal in ``m``: bisect on its slope.
    """

    def cost(m: int) -> int:
        return m + revolve_cost(n - m, k - 1) + revolve_cost(m, k)

    lo, hi = 1, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid + 1) - cost(mid) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


@register
@dataclass(frozen=True)
class Binomial(FunctionMethod):
    """Binomial checkpointing (ANODE's memory-reduced variant, Griewank's "revolve").

    At most ``checkpoints`` states (the initial one included) are stored at any time; the
    backward pass recomputes segments recursively, placing each checkpoint at the position that
    minimises the total recomputation. Gradient: identical to direct backpropagation through the
    accepted steps. Memory ``N_z (N_f + K)``; recomputation ``optimal_recomputations(N, K)``
    forward steps (``O(N log N)`` for ``K ≈ log N``).

    Schedule: on a fixed grid the number of steps is known before the forward pass, which stores
    the first sweep's checkpoints itself — the recomputation count equals the binomial optimum.
    On an adaptive grid ``N`` is only known afterwards (two-sweep scheme): the forward pass keeps
    only the initial state and the accepted grid, and the backward pass replays the grid with the
    optimal schedule — at most ``N − 1`` more recomputed steps than the optimum. Both counts are
    reported in ``SolveStats.recomputed_steps`` / ``optimal_recomputed_steps``.

    Args:
        checkpoints: K >= 1, the maximum number of stored states (default 8).
    """

    name = "binomial"
    aliases = ("revolve",)
    checkpoints: int = 8

    def __post_init__(self) -> None:
        if int(self.checkpoints) != self.checkpoints or self.checkpoints < 1:
            raise ValueError(
                f"Binomial(checkpoints=K) needs an integer K >= 1, got {self.checkpoints!r}"
            )


def optimal_recomputations(n_steps: int, checkpoints: int) -> int:
    """Forward steps the optimal binomial schedule re-runs in the backward pass, when the forward
    pass itself stores the first sweep's checkpoints (``revolve_cost`` minus that sweep)."""
    first = _first_sweep(n_steps, checkpoints)
    return revolve_cost(n_steps, checkpoints) - (first[-1] if first else 0)


def _first_sweep(n: int, k: int) -> list[int]:
    """Positions checkpointed by the first forward sweep of the optimal schedule."""
    positions, lo, slots = [], 0, k - 1
    while n - lo > 1 and slots > 0:
        lo += optimal_split(n - lo, slots + 1)
        positions.append(lo)
        slots -= 1
    return positions


class _BinomialFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: Context, holder: dict, y0: torch.Tensor, *params: torch.Tensor):
        problem, k = c.problem, c.method.checkpoints
        stored: dict[int, tuple[torch.Tensor, Any]] = {}
        if problem.fixed:
            grid = fixed_grid(problem.t_out, problem.options.step_size, problem.options.step_t)
            wanted = set(_first_sweep(len(grid) - 1, k))
        else:
            wanted = set()

        def on_step(i, y, s):
            if i == 0 or i in wanted:
                stored[i] = (y, s)

        with torch.no_grad():
            state0 = problem.init(y0)
            outputs, _, _, record = integrate(problem, y0, state0, on_step)
        holder["record"] = record
        ctx.c, ctx.record, ctx.stored = c, record, stored
        ctx.save_for_backward(y0, *params)
        state_bytes = tensor_bytes([y0, state0 if isinstance(state0, torch.Tensor) else None])
        # at most K states at once, and never more than one per step (the final one is not kept)
        c.stats.memory_bytes = min(k, max(record.n_steps, 1)) * state_bytes + 8 * len(record.ts)
        c.stats.optimal_recomputed_steps = optimal_recomputations(record.n_steps, k)
        return torch.stack(outputs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        c: Context = ctx.c
        refuse_double_backward(c.method.name)
        problem, record, k = c.problem, ctx.record, c.method.checkpoints
        y0, *params = ctx.saved_tensors
        nfe_start = problem.f.nfe
        cot = output_cotangents(grad_out, record.out_steps)
        if record.n_steps == 0:
            grad_y0 = cot.get(-1, torch.zeros_like(y0))
            return (None, None, grad_y0, *[torch.zeros_like(p) for p in params])
        rev = _Reverser(problem, record, grad_out, params, dict(ctx.stored))
        with preserve_buffers(problem.f.func):
            y_0, s_0 = rev.stored.pop(0)
            rev.reverse(0, record.n_steps, y_0, s_0, k - 1)
            grad_y0 = rev.adj.finish(problem, y0, params)
        if -1 in cot:
            grad_y0 = grad_y0 + cot[-1]
        c.stats.nfe_backward += problem.f.nfe - nfe_start
        c.stats.recomputed_steps = rev.recomputed
        return (None, None, grad_y0, *rev.adj.params)


class _Reverser:
    """Reverse steps ``lo..hi-1`` with ``slots`` free checkpoint slots, recursively."""

    def __init__(self, problem, record, grad_out, params, stored) -> None:
        self.problem, self.record, self.grad_out, self.params = problem, record, grad_out, params
        self.stored = stored  # checkpoints placed by the forward pass (fixed grids)
        self.adj: Adjoint | None = None
        self.recomputed = 0

    def advance(self, lo: int, hi: int, y, s):
        rec = self.record
        with torch.no_grad():
            for i in range(lo, hi):
                r = self.problem.step(rec.ts[i], rec.h(i), y, s)
                y, s = r.y1, r.state1
        self.recomputed += hi - lo
        return y, s

    def reverse(self, lo: int, hi: int, y_lo, s_lo, slots: int) -> None:
        while hi - lo > 1:
            if slots == 0:
                for i in range(hi - 1, lo - 1, -1):
                    self._vjp(i, *self.advance(lo, i, y_lo, s_lo))
                return
            m = lo + optimal_split(hi - lo, slots + 1)
            if m in self.stored:
                y_m, s_m = self.stored.pop(m)
            else:
                y_m, s_m = self.advance(lo, m, y_lo, s_lo)
            self.reverse(m, hi, y_m, s_m, slots - 1)
            hi = m
        self._vjp(lo, y_lo, s_lo)

    def _vjp(self, i: int, y, s) -> None:
        if self.adj is None:
            self.adj = Adjoint.zeros(y, s, self.params)
        step_vjp(self.problem, self.record, i, y, s, self.adj, self.grad_out, self.params)


Binomial.function = _BinomialFunction
