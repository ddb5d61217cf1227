"""The one backward sweep shared by every memory-efficient gradient method.

A memory-efficient method is a :class:`SweepMethod` whose ``tape(problem, stats)`` makes a
:class:`Tape` for one solve. The private autograd Function :class:`_Sweep` owns everything the
methods have in common:

* the forward solve through the shared loop (``_loop.integrate``) under ``no_grad``, with the
  tape's storage hook called at every accepted step, and the outputs stacked;
* the step record, returned with the outputs (no side channel);
* in the backward pass: refusing double backward, restoring ``func``'s buffers (BatchNorm) after
  recomputation, counting the evaluations (``SolveStats.nfe_backward``), and turning the gradients
  of the parameters into partial derivatives when some parameters are computed from others
  (non-leaf ``params``: the gradient then flows into their history exactly once).

The tape supplies only what differs: what to store, what it costs, how to run the reverse sweep.
A new method is one file (a ``Tape`` subclass and a ``SweepMethod`` subclass) plus one registry
line; see :mod:`torchmali.gradients.checkpoint` for the shortest example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import _state
from .._loop import OnStep, Problem, StepRecord, integrate
from .._solution import SolveStats
from .._tree import module_of
from .._vjp import engine_grad, vjp
from ._backward import preserve_buffers
from .base import GradientMethod


@dataclass
class Saved:
    """What the backward pass receives besides the output cotangents.

    Attributes:
        y0: the flat initial state (saved by autograd, so in-place changes are detected).
        params: the tensors differentiated (duplicates removed).
        ys: the stacked outputs when the tape asked for them (``Tape.keep_outputs``), else None.
    """

    y0: torch.Tensor
    params: list[torch.Tensor]
    ys: torch.Tensor | None


class Tape:
    """The per-solve hooks of a memory-efficient gradient method.

    The sweep calls, in this order:

    * forward: ``state0 = init(y0)``; ``integrate(problem, y0, state0, on_step)`` under
      ``no_grad``, where ``on_step(i, y_i, state_i)`` (``None``: nothing) stores what the backward
      pass needs from accepted step ``i``; then ``finish(ys, y_N, state_N, record)``, which keeps
      what it needs of the end point and returns the bytes kept (``SolveStats.memory_bytes``);
    * backward: ``backward(saved, grad_ys) -> (grad_y0, param_grads)`` under ``no_grad``, where
      ``grad_ys[k]`` is the cotangent of output ``k``; ``param_grads[j]`` may be the total
      derivative of the loss through ``func``'s uses of ``params[j]`` (the sweep makes it partial).

    Attributes:
        keep_init_graph: keep the graph of ``state0 = solver.init(f, t0, y0)`` from the forward
            pass (one evaluation's activations), so that :meth:`through_init` needs no evaluation;
            ignored when ``func`` has buffers, which the forward solve updates in place.
        keep_outputs: save the stacked outputs for the backward pass (``Saved.ys``).
    """

    keep_init_graph: ClassVar[bool] = False
    keep_outputs: ClassVar[bool] = False
    on_step: OnStep | None = None

    def __init__(self, method: GradientMethod, problem: Problem, stats: SolveStats) -> None:
        self.method = method
        self.problem = problem
        self.stats = stats
        self._init_graph: tuple[torch.Tensor, Any] | None = None

    def init(self, y0: torch.Tensor) -> Any:
        """The solver's initial state for the forward solve (detached)."""
        module = module_of(self.problem.f.func)
        keep = self.keep_init_graph and (module is None or next(module.buffers(), None) is None)
        if not keep:
            with torch.no_grad():
                return self.problem.init(y0)
        # Not inference_mode: func may differentiate internally (a CNF's divergence).
        with torch.enable_grad():
            y_in = y0.detach().requires_grad_(True)
            state0 = self.problem.init(y_in)
        self._init_graph = (y_in, state0)
        return _state.detach(state0)

    def finish(self, ys: torch.Tensor, y_n: torch.Tensor, state_n: Any, record: StepRecord) -> int:
        """Keep what the backward pass needs of the end point; return the bytes kept."""
        return 8 * len(record.ts)

    def backward(
        self, saved: Saved, grad_ys: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(∂L/∂y0, [∂L/∂p for p in saved.params])``."""
        raise NotImplementedError

    def through_init(
        self, y0: torch.Tensor, params: list[torch.Tensor], cot_state0: Any
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """Pull a cotangent of ``state0`` back through ``state0 = solver.init(f, t0, y0)``.

        Returns ``(∂/∂y0, [∂/∂p])``, or ``None`` when the cotangent is zero (``None``) or the
        state does not depend on ``y0`` or the parameters.
        """
        if cot_state0 is None:
            return None
        if self._init_graph is not None:
            y_in, state0 = self._init_graph
        else:
            with torch.enable_grad():
                y_in = y0.detach().requires_grad_(True)
                state0 = self.problem.init(y_in)
        pairs = [(o, c) for o, c in _state.pairs(state0, cot_state0) if o.requires_grad]
        if not pairs:
            return None
        y_bar, *p_bar = vjp([o for o, _ in pairs], (y_in, *params), [c for _, c in pairs])
        return y_bar, p_bar


class SweepMethod(GradientMethod):
    """A memory-efficient gradient method: one :class:`Tape` per solve, driven by the shared sweep.

    Subclasses implement :meth:`tape`; ``run`` (the interface ``solve`` calls) is shared.
    """

    memory_efficient: ClassVar[bool] = True

    def tape(self, problem: Problem, stats: SolveStats) -> Tape:
        """Make the tape of one solve."""
        raise NotImplementedError

    def run(
        self,
        problem: Problem,
        y0: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        stats: SolveStats,
    ) -> tuple[list[torch.Tensor], StepRecord]:
        """Solve; the outputs are connected to ``y0`` and ``params`` by the sweep Function.

        Under ``torch.no_grad()`` (or inference mode) no backward pass can follow: the solve runs
        as a plain integration and keeps nothing (``memory_bytes`` stays 0).
        """
        if not torch.is_grad_enabled():
            outputs, _, _, record = integrate(problem, y0, problem.init(y0))
            return outputs, record
        unique = list({id(p): p for p in params}.values())
        ys, record = _Sweep.apply(_Call(self.tape(problem, stats)), y0, *unique)
        return list(ys.unbind(0)), record


@dataclass(frozen=True)
class _Call:
    """The non-tensor argument of the sweep Function (one object instead of a row of Nones)."""

    tape: Tape


class _Sweep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, call: _Call, y0: torch.Tensor, *params: torch.Tensor):
        tape = call.tape
        state0 = tape.init(y0)
        with torch.no_grad():
            outputs, y_n, state_n, record = integrate(tape.problem, y0, state0, tape.on_step)
        ys = torch.stack(outputs)
        tape.stats.memory_bytes = tape.finish(ys, y_n, state_n, record)
        ctx.tape = tape
        ctx.keep_outputs = tape.keep_outputs
        ctx.save_for_backward(y0, *params, *((ys,) if tape.keep_outputs else ()))
        return ys, record

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor, _grad_record: Any):
        tape: Tape = ctx.tape
        refuse_double_backward(tape.method.name)
        saved_tensors = list(ctx.saved_tensors)
        ys = saved_tensors.pop() if ctx.keep_outputs else None
        y0, *params = saved_tensors
        f = tape.problem.f
        nfe = f.nfe
        with preserve_buffers(f.func):
            grad_y0, grads = tape.backward(Saved(y0, params, ys), grad_ys)
        tape.stats.nfe_backward += f.nfe - nfe
        return (None, grad_y0, *partial_grads(params, list(grads)))


def refuse_double_backward(name: str) -> None:
    """Raise if the backward pass is asked to build a graph (``create_graph=True``)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"gradient={name!r} does not support double backward (create_graph=True / "
            "higher-order gradients): its backward pass is a hand-written sweep that builds no "
            "graph. Use gradient='direct' for higher-order derivatives"
        )


def partial_grads(params: list[torch.Tensor], totals: list[torch.Tensor]) -> list[torch.Tensor]:
    """Turn total derivatives into partial ones when some parameters are computed from others.

    A per-step VJP with respect to ``p_j`` follows every path to ``p_j``, including the paths
    through another parameter ``p_i = g(p_j)``; autograd then propagates the gradient returned for
    ``p_i`` into ``p_j`` once more. The partial derivatives ``D`` solve ``T = D + Aᵀ D``, where
    ``Aᵀ D`` is that propagation (one engine call over the parameters' own history); ``A`` is
    nilpotent (the parameters form a DAG), so the iteration ``D ← T − Aᵀ D`` is exact after at
    most ``len(params)`` rounds. Nothing is done when every parameter is a leaf.
    """
    nonleaf = [j for j, p in enumerate(params) if p.grad_fn is not None]
    if not nonleaf or len(params) < 2:
        return totals
    outs = [params[j] for j in nonleaf]
    d = totals
    for _ in range(len(params)):
        flow = engine_grad(outs, params, [d[j] for j in nonleaf])
        new = list(totals)
        for j, g in enumerate(flow):
            if g is None:
                continue
            if params[j].grad_fn is not None:
                g = g - d[j]  # the engine hands an output's own cotangent back to it
            new[j] = totals[j] - g
        if all(a is b or torch.equal(a, b) for a, b in zip(new, d, strict=True)):
            return new
        d = new
    return d
