"""ACA / ANODE checkpointing: store accepted states, recompute each step's graph in reverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._loop import Problem, StepRecord, integrate, step_outputs
from ._backward import (
    Context,
    FunctionMethod,
    add_into,
    output_cotangents,
    preserve_buffers,
    refuse_double_backward,
    vjp,
)
from ._memory import tensor_bytes
from .base import register


@register
@dataclass(frozen=True)
class Checkpoint(FunctionMethod):
    """ACA (Zhuang et al. 2020) / ANODE (Gholami et al. 2019): discretize-then-optimize with
    one checkpoint per accepted step.

    The forward pass runs under ``no_grad`` and stores each accepted step's starting state (and
    the solver's auxiliary state, e.g. ALF's ``v`` or the FSAL derivative); rejected trial steps
    leave nothing. The backward pass recomputes each step with its local graph, takes one
    vector–Jacobian product and frees it.

    Gradient: identical to direct backpropagation through the accepted steps. Memory:
    ``N_z (N_f + N_t)`` — one state per step instead of a whole graph per step. Cost: one extra
    forward sweep (every accepted step evaluated again). Works with every solver, fixed or
    adaptive, including dense output.
    """

    name = "checkpoint"
    aliases = ("aca", "anode")


class _CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: Context, holder: dict, y0: torch.Tensor, *params: torch.Tensor):
        problem = c.problem
        stored: list[tuple[torch.Tensor, Any]] = []
        with torch.no_grad():
            state0 = problem.init(y0)
            outputs, _, _, record = integrate(
                problem, y0, state0, lambda i, y, s: stored.append((y, s))
            )
        holder["record"] = record
        ctx.c, ctx.record, ctx.stored = c, record, stored
        ctx.save_for_backward(y0, *params)
        c.stats.memory_bytes = tensor_bytes(_flat(stored)) + 8 * len(record.ts)
        return torch.stack(outputs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        c: Context = ctx.c
        refuse_double_backward(c.method.name)
        problem, record = c.problem, ctx.record
        y0, *params = ctx.saved_tensors
        nfe_start = problem.f.nfe
        cot = output_cotangents(grad_out, record.out_steps)
        adj = Adjoint.zeros(y0, ctx.stored[0][1] if ctx.stored else None, params)
        with preserve_buffers(problem.f.func):
            for i in range(record.n_steps - 1, -1, -1):
                y_i, s_i = ctx.stored[i]
                step_vjp(problem, record, i, y_i, s_i, adj, grad_out, params)
            grad_y0 = adj.finish(problem, y0, params)
        if -1 in cot:
            grad_y0 = grad_y0 + cot[-1]
        c.stats.nfe_backward += problem.f.nfe - nfe_start
        return (None, None, grad_y0, *adj.params)


def _flat(stored):
    for y, s in stored:
        yield y
        if isinstance(s, torch.Tensor):
            yield s


class Adjoint:
    """The running cotangents ``(ā_y, ā_state, θ̄)`` of a reverse sweep over accepted steps."""

    def __init__(self, y: torch.Tensor, state: Any, params: list[torch.Tensor]) -> None:
        self.y = y
        self.state = state
        self.params = params

    @staticmethod
    def zeros(y0: torch.Tensor, state0: Any, params) -> Adjoint:
        state = torch.zeros_like(state0) if isinstance(state0, torch.Tensor) else None
        return Adjoint(torch.zeros_like(y0), state, [torch.zeros_like(p) for p in params])

    def finish(self, problem: Problem, y0: torch.Tensor, params) -> torch.Tensor:
        """Propagate through ``state0 = solver.init(f, t0, y0)`` and return ``∂L/∂y0``."""
        if self.state is None:
            return self.y
        with torch.enable_grad():
            y_in = y0.detach().requires_grad_(True)
            state0 = problem.init(y_in)
        y_bar, *p_bar = vjp((state0,), (y_in, *params), (self.state,))
        add_into(self.params, p_bar)
        return self.y + y_bar


def step_vjp(
    problem: Problem,
    record: StepRecord,
    i: int,
    y_i: torch.Tensor,
    s_i: Any,
    adj: Adjoint,
    grad_out: torch.Tensor,
    params,
) -> None:
    """Recompute accepted step ``i`` with its graph and pull the cotangents back through it.

    Updates ``adj`` in place: on entry it holds the cotangents at ``ts[i+1]`` (without the
    outputs falling in step ``i``), on exit those at ``ts[i]``.
    """
    has_state = isinstance(s_i, torch.Tensor)
    with torch.enable_grad():
        y_in = y_i.detach().requires_grad_(True)
        s_in = s_i.detach().requires_grad_(True) if has_state else s_i
        result = problem.step(record.ts[i], record.h(i), y_in, s_in)
        outs = [result.y1]
        cots = [adj.y]
        if has_state and isinstance(result.state1, torch.Tensor) and adj.state is not None:
            outs.append(result.state1)
            cots.append(adj.state)
        for k, y_k in step_outputs(problem, record, i, y_in, result):
            outs.append(y_k)
            cots.append(grad_out[k])
    inputs = (y_in, s_in, *params) if has_state else (y_in, *params)
    grads = vjp(outs, inputs, cots)
    adj.y = grads[0]
    if has_state:
        adj.state = grads[1]
        add_into(adj.params, grads[2:])
    else:
        adj.state = None
        add_into(adj.params, grads[1:])


Checkpoint.function = _CheckpointFunction
