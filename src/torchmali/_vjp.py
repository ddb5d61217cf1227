"""Vector–Jacobian products for hand-written backward passes (solvers' fused reverse steps and
the gradient methods' sweeps).

Every per-step VJP keeps the graph it walks (``retain_graph=True``): ``func`` may use tensors
built from the parameters *before* the solve (``W = 2 * W0`` outside ``func``, interpolation
coefficients computed from data that requires grad), and every step's VJP then walks that shared
history again. Retaining costs nothing for the step's own graph, which is freed as soon as its
output goes out of scope.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: PyTorch's C++ autograd engine. ``torch.autograd.grad`` validates its arguments in Python
#: (about 0.1 ms a call with torch 2.13 — as much as a small network's whole backward step);
#: the per-step VJPs pass tensors they built themselves, so they call the engine directly.
_ENGINE = getattr(torch.autograd.variable.Variable, "_execution_engine", None)
#: Tensor types without ``__torch_function__`` overrides (subclasses take the public path).
_PLAIN = (torch.Tensor, nn.Parameter)


def engine_grad(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    retain_graph: bool = True,
) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)``, without its
    Python-side argument checks when the arguments are plain tensors of matching shapes.

    Unused inputs get ``None``. The graph is retained by default (see the module docstring).
    """
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
    retain_graph: bool = True,
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
