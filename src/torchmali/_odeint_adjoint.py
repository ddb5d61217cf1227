"""``odeint_adjoint``: torchdiffeq's signature, on top of :func:`odeint` with ``Adjoint``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ._odeint import State, odeint
from .gradients.adjoint import Adjoint


def odeint_adjoint(
    func: Callable,
    y0: State,
    t: torch.Tensor | Sequence[float],
    rtol: float | Sequence[float] = 1e-7,
    atol: float | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    event_fn: Callable | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Iterable[torch.Tensor] | None = None,
) -> State | tuple[torch.Tensor, State]:
    """A drop-in replacement for ``torchdiffeq.odeint_adjoint`` (the backsolve adjoint).

    Equivalent to ``odeint(..., gradient=Adjoint(adjoint_rtol, adjoint_atol, adjoint_method,
    adjoint_options), params=adjoint_params)``; see :class:`torchmali.Adjoint` for what the
    backsolve adjoint costs and why its gradient is not exact for the discrete solve (prefer
    ``odeint(..., gradient="mali")`` or ``"checkpoint"`` when that matters).

    Unlike torchdiffeq, ``func`` may be any callable: for a plain function pass the tensors to
    differentiate as ``adjoint_params`` (a function that closes over trainable tensors without
    them is refused with a ``ValueError`` instead of silently getting zero gradients).

    Args:
        func: ``func(t, y) -> dy/dt``, an ``nn.Module`` or any callable.
        y0: the initial state, a tensor or a tuple of tensors.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing.
        rtol: relative tolerance of the forward solve.
        atol: absolute tolerance of the forward solve.
        method: solver of the forward solve (default ``"dopri5"``).
        options: solver options of the forward solve.
        event_fn: integrate until ``event_fn(t, y)`` changes sign (see :func:`torchmali.odeint`);
            returns ``(event_t, solution)``. The backward solve starts at the event time.
        adjoint_rtol: relative tolerance of the backward solve (default ``rtol``; a number).
        adjoint_atol: absolute tolerance of the backward solve (default ``atol``; a number).
        adjoint_method: solver of the backward solve (default ``method``).
        adjoint_options: options of the backward solve (default ``options`` without ``norm``);
            ``{"norm": "seminorm"}`` leaves the parameter adjoint out of error control.
        adjoint_params: the tensors to differentiate (default: ``func.parameters()`` for a
            module).

    Returns:
        The solution at every time in ``t``, stacked along a new leading dimension
        (``(event_t, solution)`` with ``event_fn``).

    Raises:
        ValueError, TypeError: invalid input (the message names the fix).
        SolverError: the forward or backward solve could not finish.
    """
    if (
        adjoint_method is not None
        and adjoint_method != method
        and options is not None
        and adjoint_options is None
    ):
        raise ValueError(
            "If `adjoint_method != method` then we cannot infer `adjoint_options` from "
            "`options`. So as `options` has been passed then `adjoint_options` must be passed "
            "as well."
        )
    gradient = Adjoint(
        rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method, options=adjoint_options
    )
    # adjoint_params is validated by odeint's params= (``adjoint_params=3`` is a TypeError
    # naming the fix, not "'int' object is not iterable")
    return odeint(
        func,
        y0,
        t,
        rtol,
        atol,
        method,
        options,
        gradient=gradient,
        params=adjoint_params,
        event_fn=event_fn,
    )
