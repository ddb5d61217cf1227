"""Pieces shared by the memory-efficient backward passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._loop import Problem, StepRecord
from .._solution import SolveStats
from .._tree import module_of
from .base import GradientMethod


@dataclass(frozen=True)
class Context:
    """Non-tensor configuration handed to a custom autograd Function (one object, no Nones)."""

    problem: Problem
    method: Any
    stats: SolveStats


class FunctionMethod(GradientMethod):
    """A gradient method implemented by one private ``torch.autograd.Function``.

    The Function's ``forward(ctx, context, holder, y0, *params)`` integrates under ``no_grad``,
    stores the accepted grid in ``holder["record"]`` and returns the stacked outputs; its
    ``backward`` returns ``(None, None, grad_y0, *grad_params)``.
    """

    function: ClassVar[type[torch.autograd.Function]]

    def run(
        self,
        problem: Problem,
        y0: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        stats: SolveStats,
    ) -> tuple[list[torch.Tensor], StepRecord]:
        holder: dict = {}
        ys = self.function.apply(Context(problem, self, stats), holder, y0, *params)
        return list(ys.unbind(0)), holder["record"]


def refuse_double_backward(name: str) -> None:
    """Raise if the backward pass is asked to build a graph (``create_graph=True``)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"gradient={name!r} does not support double backward (create_graph=True / "
            "higher-order gradients); use gradient='direct' for higher-order derivatives"
        )


#: PyTorch's C++ autograd engine. ``torch.autograd.grad`` validates its arguments in Python
#: (about 0.1 ms a call with torch 2.13 — as much as a small network's whole backward step);
#: the per-step VJPs below pass tensors they built themselves, so they call the engine directly.
_ENGINE = getattr(torch.autograd.variable.Variable, "_execution_engine", None)
#: Tensor types without ``__torch_function__`` overrides (subclasses take the public path).
_PLAIN = (torch.Tensor, nn.Parameter)


def engine_grad(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    retain_graph: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)``, without its
    Python-side argument checks when the arguments are plain tensors of matching shapes."""
    plain = _ENGINE is not None and all(
        type(o) in _PLAIN
        and type(c) in _PLAIN
        and o.shape == c.shape
        and o.dtype == c.dtype
        and o.device == c.device
        for o, c in zip(outputs, cotangents, strict=True)
    )
    if plain and all(type(x) in _PLAIN for x in inputs):
        return _ENGINE.run_backward(
            tuple(outputs), tuple(cotangents), retain_graph, False, tuple(inputs), True, False
        )
    return torch.autograd.grad(
        outputs, inputs, cotangents, retain_graph=retain_graph, allow_unused=True
    )


def vjp(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    retain_graph: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Vector–Jacobian product of ``outputs`` with ``cotangents``; outputs without a graph add
    nothing, and inputs that no output depends on get zeros."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents, strict=True) if o.requires_grad]
    if not pairs:
        return tuple(torch.zeros_like(x) for x in inputs)
    grads = engine_grad([o for o, _ in pairs], inputs, [c for _, c in pairs], retain_graph)
    if all(g is not None for g in grads):
        return tuple(grads)
    return tuple(
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
    )


def add_into(acc: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """``acc[i] += grads[i]`` in place (one fused call)."""
    if len(acc) != len(grads):
        raise ValueError(f"add_into: {len(acc)} accumulators but {len(grads)} gradients")
    if acc:
        torch._foreach_add_(acc, list(grads))


@contextlib.contextmanager
def preserve_buffers(func: Any) -> Iterator[None]:
    """Restore the buffers of ``func`` (an ``nn.Module``) after recomputation.

    The forward pass already updated stateful layers (BatchNorm running statistics) exactly as
    direct backpropagation would; re-evaluating ``func`` in a backward pass must not update them
    a second time.
    """
    module = module_of(func)
    if module is None:
        yield
        return
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def output_cotangents(grad_out: torch.Tensor, out_steps: list[int]) -> dict[int, torch.Tensor]:
    """Sum the incoming cotangents of the outputs by the accepted step they end (``-1``: t0)."""
    by_step: dict[int, torch.Tensor] = {}
    for k, i in enumerate(out_steps):
        g = grad_out[k]
        by_step[i] = g if i not in by_step else by_step[i] + g
    return by_step
