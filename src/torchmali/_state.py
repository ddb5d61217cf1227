"""Solver states: ``None``, one tensor, or a tuple of tensors (``None`` entries allowed).

Multistep methods carry a history (e.g. Adams' previous derivatives), FSAL Runge–Kutta methods
the last derivative, ALF its velocity. Backward passes store, replay and differentiate these
states through the helpers below, so that every gradient method handles every shape.

Cotangents of a state have the state's structure, with ``None`` standing for zero: a ``None``
cotangent of a whole state, or ``None`` entries of a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

State = Any  # None | torch.Tensor | tuple[torch.Tensor | None, ...]


def check(state: State, where: str) -> None:
    """Raise ``TypeError`` unless ``state`` is ``None``, a tensor or a tuple of tensors / None."""
    if state is None or isinstance(state, torch.Tensor):
        return
    if isinstance(state, tuple) and all(s is None or isinstance(s, torch.Tensor) for s in state):
        return
    raise TypeError(
        f"{where} returned a solver state of type {type(state).__name__}; a solver state must be "
        "None, a tensor or a tuple of tensors (None entries allowed)"
    )


def leaves(state: State) -> list[torch.Tensor]:
    """The tensors of ``state`` in order (``None`` entries skipped)."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [s for s in state if s is not None]


def tree_map(fn: Callable[[torch.Tensor], Any], state: State) -> State:
    """Apply ``fn`` to every tensor of ``state``, keeping its structure."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return tuple(None if s is None else fn(s) for s in state)


def detach(state: State) -> State:
    """``state`` with every tensor detached."""
    return tree_map(torch.Tensor.detach, state)


def grad_inputs(state: State) -> State:
    """Detached copies of the tensors of ``state`` that require grad (inputs of a local VJP)."""
    return tree_map(lambda s: s.detach().requires_grad_(True), state)


def pairs(outputs: State, cotangents: State) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(tensor, cotangent)`` for the tensors of ``outputs`` whose cotangent is not ``None``."""
    if outputs is None or cotangents is None:
        return
    if isinstance(outputs, torch.Tensor):
        yield outputs, cotangents
        return
    for o, c in zip(outputs, cotangents, strict=True):
        if o is not None and c is not None:
            yield o, c


def rebuild(like: State, grads: Sequence[torch.Tensor]) -> State:
    """A cotangent with the structure of ``like`` from the gradients of ``leaves(like)``."""
    it = iter(grads)
    out = tree_map(lambda _: next(it), like)
    return out


def add(a: State, b: State) -> State:
    """``a + b`` for two cotangents of the same structure (``None`` is zero)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, torch.Tensor):
        return a + b
    return tuple(add(x, y) for x, y in zip(a, b, strict=True))
