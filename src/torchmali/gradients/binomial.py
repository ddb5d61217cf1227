"""Binomial checkpointing (Griewank's "revolve"): at most K stored states, segments recomputed."""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import torch

from .. import _state
from .._loop import Problem, StepRecord
from .._solution import SolveStats
from . import _validate
from ._memory import tensor_bytes
from ._replay import ReplayMethod, ReplayTape
from ._sweep import Saved
from .base import register


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


class _BinomialTape(ReplayTape):
    """At most K stored states; segments recomputed recursively in the backward pass."""

    def __init__(self, method: Binomial, problem: Problem, stats: SolveStats) -> None:
        super().__init__(method, problem, stats)
        self.k = method.checkpoints
        self.budget: int | None = getattr(method, "memory_budget", None)
        # On a fixed grid the step count is known up front: the forward pass places the first
        # sweep's checkpoints itself (on the normalised grid the loop steps on).
        self.n = len(problem.fixed_grid()) - 1 if problem.fixed else 0
        self.wanted = set(_first_sweep(self.n, self.k)) if problem.fixed else set()
        self.stored: dict[int, tuple[torch.Tensor, Any]] = {}

    def init(self, y0: torch.Tensor) -> Any:
        state0 = super().init(y0)
        if self.budget is not None:
            point = [y0, *_state.leaves(state0)]
            self.point_bytes = max(tensor_bytes(point), sum(t.nbytes for t in point))
            if self.problem.fixed:
                self.k = self._budget_slots(self.n)
                self.wanted = set(_first_sweep(self.n, self.k))
        return state0

    def _budget_slots(self, n: int) -> int:
        """K from ``memory_budget``: the states that fit beside the ``n + 1`` step times."""
        k = (self.budget - 8 * (n + 1)) // self.point_bytes
        if k < 1:
            need = self.point_bytes + 8 * (n + 1)
            raise ValueError(
                f"Binomial(memory_budget={self.budget}) cannot hold one state of this solve "
                f"({self.point_bytes} bytes) beside its {n + 1} step times: raise memory_budget "
                f"to at least {need}, or use Binomial(checkpoints=K)"
            )
        return min(k, max(n, 1))

    def on_step(self, i: int, y: torch.Tensor, state: Any) -> None:
        if i == 0 or i in self.wanted:
            self.stored[i] = (y, state)

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        self.record = record
        if self.budget is not None and not self.problem.fixed:
            self.k = self._budget_slots(record.n_steps)  # the two-sweep scheme plans now
        y0, s0 = self.stored.get(0, (y_n, state_n))
        state_bytes = tensor_bytes([y0, *_state.leaves(s0)])
        if self.budget is not None:
            state_bytes = self.point_bytes
        self.stats.optimal_recomputed_steps = optimal_recomputations(record.n_steps, self.k)
        # at most K states at once, and never more than one per step (the final one is not kept)
        return min(self.k, max(record.n_steps, 1)) * state_bytes + 8 * len(record.ts)

    def backward(self, saved: Saved, grad_ys: torch.Tensor):
        record = self.record
        self.start_backward(saved, grad_ys, record)
        self.recomputed = 0
        if record.n_steps:
            stored = dict(self.stored)  # the forward's checkpoints survive a second backward
            y_0, s_0 = stored.pop(0)
            self._reverse(0, record.n_steps, y_0, s_0, self.k - 1, stored)
        self.stats.recomputed_steps = self.recomputed
        return self.end_backward(saved)

    def _advance(self, lo: int, hi: int, y: torch.Tensor, s: Any) -> tuple[torch.Tensor, Any]:
        rec = self.record
        with torch.no_grad():
            for i in range(lo, hi):
                r = self.problem.step(rec.ts[i], rec.h(i), y, s)
                y, s = r.y1, r.state1
        self.recomputed += hi - lo
        return y, s

    def _reverse(self, lo: int, hi: int, y_lo, s_lo, slots: int, stored: dict) -> None:
        """Reverse steps ``lo..hi-1`` from ``(y_lo, s_lo)`` with ``slots`` free checkpoints."""
        while hi - lo > 1:
            if slots == 0:
                for i in range(hi - 1, lo - 1, -1):
                    self.reverse_step(i, *self._advance(lo, i, y_lo, s_lo))
                return
            m = lo + optimal_split(hi - lo, slots + 1)
            if m in stored:
                y_m, s_m = stored.pop(m)
            else:
                y_m, s_m = self._advance(lo, m, y_lo, s_lo)
            self._reverse(m, hi, y_m, s_m, slots - 1, stored)
            hi = m
        self.reverse_step(lo, y_lo, s_lo)


@register
@dataclass(frozen=True)
class Binomial(ReplayMethod):
    """Binomial checkpointing (ANODE's memory-reduced variant, Griewank's "revolve").

    At most ``checkpoints`` states (the initial one included) are stored at any time; the
    backward pass recomputes segments recursively, placing each checkpoint at the position that
    minimises the total recomputation, and reverses each step with :meth:`step_vjp`. Gradient:
    identical to direct backpropagation through the accepted steps. Memory ``N_z (N_f + K)``;
    recomputation ``optimal_recomputations(N, K)`` forward steps (``O(N log N)`` for
    ``K ≈ log N``). No double backward (use ``"direct"``).

    Schedule: on a fixed grid the number of steps is known before the forward pass, which stores
    the first sweep's checkpoints itself — the recomputation count equals the binomial optimum.
    On an adaptive grid ``N`` is only known afterwards (two-sweep scheme): the forward pass keeps
    only the initial state and the accepted grid, and the backward pass replays the grid with the
    optimal schedule — at most ``N − 1`` more recomputed steps than the optimum. Both counts are
    reported in ``SolveStats.recomputed_steps`` / ``optimal_recomputed_steps``.

    Args:
        checkpoints: K >= 1, the maximum number of stored states (default 8).
        memory_budget: bytes the stored states and the step times may take
            (``SolveStats.memory_bytes``); when given, K is the number of states that fit
            (computed at the forward pass from the state's size and the number of steps) and
            ``checkpoints`` is not used. A budget below one state is a ``ValueError`` naming the
            minimum.

    Raises:
        TypeError, ValueError: ``checkpoints`` is not an integer >= 1, ``memory_budget`` is not
            a positive integer, or both are given.
    """

    name = "binomial"
    aliases = ("revolve",)
    checkpoints: int = 8
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        k = _validate.integer(
            "Binomial", "checkpoints", self.checkpoints, "Binomial(checkpoints=8)"
        )
        object.__setattr__(self, "checkpoints", k)
        if self.memory_budget is not None:
            budget = _validate.integer(
                "Binomial", "memory_budget", self.memory_budget,
                "Binomial(memory_budget=2**20) (bytes)",
            )  # fmt: skip
            object.__setattr__(self, "memory_budget", budget)
            if k != type(self).checkpoints:
                raise ValueError(
                    f"Binomial(checkpoints={k}, memory_budget={budget}): pass one of them — "
                    "memory_budget sets the number of checkpoints"
                )

    def tape(self, problem: Problem, stats: SolveStats) -> _BinomialTape:
        return _BinomialTape(self, problem, stats)


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
