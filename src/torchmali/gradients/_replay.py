"""The checkpoint family: recompute accepted steps from stored states, one step VJP at a time.

:class:`ReplayMethod` is the base of ``checkpoint`` and ``binomial``. Their backward passes pull
the cotangents back through one accepted step at a time with the method's :meth:`step_vjp`, the
per-step vector–Jacobian product (shared interface 1). The default, :func:`autograd_step_vjp`,
recomputes the step with its graph and takes one VJP. Another implementation plugs in by
overriding the hook in a subclass, e.g. the symplectic adjoint's stage-by-stage VJP::

    @register
    @dataclass(frozen=True)
    class Symplectic(Checkpoint):
        name = "symplectic"
        aliases = ()

        def step_vjp(self, problem, t0, h, y0, state0, cot_y1, cot_state1, outputs, params):
            return symplectic_step_vjp(
                problem, t0, h, y0, state0, cot_y1, cot_state1, outputs, params
            )

Storage, the schedule (one state per step, or binomial), evaluation counts, buffers, the solver
state's structure and the pass through ``solver.init`` stay with the shared code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from .. import _state
from .._loop import Problem, StepRecord
from .._vjp import add_into, vjp
from ._sweep import Saved, SweepMethod, Tape

StepOutputs = Sequence[tuple[float, torch.Tensor]]


def autograd_step_vjp(
    problem: Problem,
    t0: float,
    h: float,
    y0: torch.Tensor,
    state0: Any,
    cot_y1: torch.Tensor,
    cot_state1: Any,
    outputs: StepOutputs,
    params: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, Any, list[torch.Tensor]]:
    """Pull the cotangents at the end of one accepted step back to its start (interface 1).

    Recomputes the step from ``(y0, state0)`` with its graph (``s`` evaluations of ``func`` for an
    ``s``-stage method, all alive at once) and takes one vector–Jacobian product.

    Args:
        problem: the normalised problem (solver, right-hand side, options).
        t0: the step's start (normalised, increasing time).
        h: the step size; the step ends at ``t0 + h``.
        y0: the state at ``t0``.
        state0: the solver state at ``t0``: ``None``, a tensor or a tuple of tensors.
        cot_y1: the cotangent of the state at ``t0 + h`` (from the later steps).
        cot_state1: the cotangent of the solver state at ``t0 + h``, with its structure
            (``None`` for zero, or ``None`` entries).
        outputs: ``(t_k, cotangent of y(t_k))`` for every requested output in ``(t0, t0 + h]``;
            ``t_k == t0 + h`` means the step's end ``y1``, otherwise ``y(t_k)`` is
            ``problem.interpolate`` of this step (dense output, or a fixed grid's linear/cubic
            interpolation).
        params: the tensors to differentiate.

    Returns:
        ``(cot_y0, cot_state0, param_grads)``: the cotangents at ``t0`` (``cot_state0`` with the
        structure of ``state0``) and the VJP of each parameter (zeros when unused).
    """
    with torch.enable_grad():
        y_in = y0.detach().requires_grad_(True)
        s_in = _state.grad_inputs(state0)
        result = problem.step(t0, h, y_in, s_in)
        outs, cots = [result.y1], [cot_y1]
        for o, c in _state.pairs(result.state1, cot_state1):
            outs.append(o)
            cots.append(c)
        for t_k, c in outputs:
            if t_k == t0 + h:
                outs.append(result.y1)
            else:
                outs.append(problem.interpolate(t0, h, y_in, result, t_k))
            cots.append(c)
    s_leaves = _state.leaves(s_in)
    grads = vjp(outs, (y_in, *s_leaves, *params), cots)
    n = len(s_leaves)
    return grads[0], _state.rebuild(s_in, grads[1 : 1 + n]), list(grads[1 + n :])


class ReplayMethod(SweepMethod):
    """Base of the methods that recompute accepted steps from stored states.

    Exact: the gradient equals direct backpropagation through the accepted steps. Subclasses
    provide the tape (what is stored, in which order steps are reversed); the per-step VJP is the
    :meth:`step_vjp` hook.
    """

    exact = True

    def step_vjp(
        self,
        problem: Problem,
        t0: float,
        h: float,
        y0: torch.Tensor,
        state0: Any,
        cot_y1: torch.Tensor,
        cot_state1: Any,
        outputs: StepOutputs,
        params: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, Any, list[torch.Tensor]]:
        """The per-step VJP (interface 1, see :func:`autograd_step_vjp`); override to plug in
        another implementation of the same signature."""
        return autograd_step_vjp(problem, t0, h, y0, state0, cot_y1, cot_state1, outputs, params)


class Cotangents:
    """The running cotangents ``(ā_y, ā_state, θ̄)`` of a reverse sweep over accepted steps."""

    def __init__(self, y: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        self.y = torch.zeros_like(y)
        self.state: Any = None  # zero
        self.params = [torch.zeros_like(p) for p in params]


class ReplayTape(Tape):
    """A tape whose backward pass reverses accepted steps one by one with ``step_vjp``."""

    method: ReplayMethod

    def start_backward(self, saved: Saved, grad_ys: torch.Tensor, record: StepRecord) -> None:
        """Set up the running cotangents and the outputs falling in each step."""
        self.record, self.grad_ys, self.params = record, grad_ys, saved.params
        self.cot = Cotangents(saved.y0, saved.params)
        self.outputs: dict[int, list[tuple[float, torch.Tensor]]] = defaultdict(list)
        ts, t_out = record.ts, self.problem.t_out
        for k, i in enumerate(record.out_steps):
            if i >= 0:  # at the step's end exactly t0 + h, as step_vjp expects
                t_k = ts[i] + record.h(i) if t_out[k] == ts[i + 1] else t_out[k]
                self.outputs[i].append((t_k, grad_ys[k]))

    def reverse_step(self, i: int, y_i: torch.Tensor, s_i: Any) -> None:
        """Pull the running cotangents back through accepted step ``i`` (from ``(y_i, s_i)``)."""
        rec, cot = self.record, self.cot
        cot.y, cot.state, grads = self.method.step_vjp(
            self.problem, rec.ts[i], rec.h(i), y_i, s_i, cot.y, cot.state,
            self.outputs.get(i, ()), self.params,
        )  # fmt: skip
        add_into(cot.params, grads)

    def end_backward(self, saved: Saved) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Add the pass through ``solver.init`` and the outputs at ``t0``; return the gradients."""
        cot = self.cot
        grad_y0 = cot.y
        pulled = self.through_init(saved.y0, saved.params, cot.state)
        if pulled is not None:
            grad_y0 = grad_y0 + pulled[0]
            add_into(cot.params, pulled[1])
        for k, i in enumerate(self.record.out_steps):
            if i < 0:
                grad_y0 = grad_y0 + self.grad_ys[k]
        return grad_y0, cot.params
