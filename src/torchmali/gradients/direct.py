"""Direct backpropagation through the solver's operations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._loop import Problem, StepRecord, integrate
from .._solution import SolveStats
from ._memory import SavedTensorBytes
from .base import GradientMethod, register


@register
@dataclass(frozen=True)
class Direct(GradientMethod):
    """Backpropagate through every operation of the accepted steps (discretize-then-optimize).

    Exact gradient of the discrete solve. Memory grows with the number of steps:
    ``N_z · N_f · N_t · m`` (graph of every evaluation, rejected trial steps are freed as soon as
    they are rejected). Works with every solver.

    The accepted step sizes are treated as constants (no gradient flows through step-size
    control), so that every gradient method differentiates the same discrete solve.
    """

    name = "direct"
    aliases = ("backprop",)

    def run(
        self,
        problem: Problem,
        y0: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        stats: SolveStats,
    ) -> tuple[list[torch.Tensor], StepRecord]:
        with SavedTensorBytes() as saved:
            state0 = problem.init(y0)
            outputs, _, _, record = integrate(problem, y0, state0)
        stats.memory_bytes = saved.nbytes + 8 * len(record.ts)
        return outputs, record
