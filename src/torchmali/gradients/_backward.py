"""Pieces shared by the memory-efficient backward passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .._tree import module_of
from .._vjp import add_into, engine_grad, vjp

__all__ = ["add_into", "engine_grad", "output_cotangents", "preserve_buffers", "vjp"]


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
