"""ACA / ANODE checkpointing: store accepted states, recompute each step's graph in reverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import _state
from .._loop import Problem, StepRecord
from .._solution import SolveStats
from ._memory import tensor_bytes
from ._replay import ReplayMethod, ReplayTape
from ._sweep import Saved
from .base import register


class _CheckpointTape(ReplayTape):
    """One stored ``(y_i, state_i)`` per accepted step; steps reversed last to first."""

    def __init__(self, method: Checkpoint, problem: Problem, stats: SolveStats) -> None:
        super().__init__(method, problem, stats)
        self.stored: list[tuple[torch.Tensor, Any]] = []

    def on_step(self, i: int, y: torch.Tensor, state: Any) -> None:
        self.stored.append((y, state))

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        self.record = record
        kept = [t for y, s in self.stored for t in (y, *_state.leaves(s))]
        return tensor_bytes(kept) + 8 * len(record.ts)

    def backward(self, saved: Saved, grad_ys: torch.Tensor):
        self.start_backward(saved, grad_ys, self.record)
        for i in range(self.record.n_steps - 1, -1, -1):
            self.reverse_step(i, *self.stored[i])
        return self.end_backward(saved)


@register
@dataclass(frozen=True)
class Checkpoint(ReplayMethod):
    """ACA (Zhuang et al. 2020) / ANODE (Gholami et al. 2019): discretize-then-optimize with
    one checkpoint per accepted step.

    The forward pass runs under ``no_grad`` and stores each accepted step's starting state (and
    the solver's state, e.g. ALF's ``v``, the FSAL derivative or a multistep history); rejected
    trial steps leave nothing. The backward pass recomputes each step with its local graph, takes
    one vector–Jacobian product (:meth:`step_vjp`) and frees it.

    Gradient: identical to direct backpropagation through the accepted steps. Memory:
    ``N_z (N_f + N_t)`` — one state per step instead of a whole graph per step. Cost: one extra
    forward sweep (every accepted step evaluated again). Works with every solver, fixed or
    adaptive, including dense output. No double backward (use ``"direct"``).
    """

    name = "checkpoint"
    aliases = ("aca", "anode")

    def tape(self, problem: Problem, stats: SolveStats) -> _CheckpointTape:
        return _CheckpointTape(self, problem, stats)
