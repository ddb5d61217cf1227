"""``odeint_event``: torchdiffeq's event API, with gradients through the event time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._events import combine, reroute
from ._odeint import State, odeint
from ._tree import Structure


def odeint_event(
    func: Callable,
    y0: State,
    t0: torch.Tensor | float,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    **kwargs: Any,
) -> tuple[torch.Tensor, State]:
    """Integrate from ``t0`` until ``event_fn(t, y)`` changes sign; differentiable event time.

    The same call as ``torchdiffeq.odeint_event``: the solve runs forward in time (backward with
    ``reverse_time=True``) through ``odeint_interface(func, y0, [t0, t0 ± 1], event_fn=event_fn,
    **kwargs)``; ``kwargs`` may hold ``rtol``, ``atol``, ``method``, ``options`` and torchmali's
    ``gradient=`` / ``params=`` (or ``odeint_adjoint``'s arguments with
    ``odeint_interface=torchmali.odeint_adjoint``).

    Gradients: ``event_t`` and the final state are differentiable with respect to ``y0``, the
    parameters of ``func`` and ``t0``, with every gradient method. The event time's dependence
    comes from the implicit function theorem on ``event_fn(τ, y(τ)) = 0``, as in torchdiffeq:
    exact for the located event up to the bisection tolerance (``atol``).

    Args:
        func: ``func(t, y) -> dy/dt``.
        y0: the initial state (tensor or tuple of tensors).
        t0: the initial time (a 0-dim or one-element tensor, or a number).
        event_fn: ``event_fn(t, y) -> tensor``; the event is the first sign change of any
            element.
        reverse_time: integrate towards decreasing time.
        odeint_interface: ``torchmali.odeint`` (default) or ``torchmali.odeint_adjoint``.
        **kwargs: passed on to ``odeint_interface``.

    Returns:
        ``(event_t, solution)``: the event time (shape of ``t0``'s one element) and the
        solution at ``[t0, event_t]`` stacked along a new leading dimension.

    Raises:
        ValueError, TypeError: invalid input.
        SolverError: no event within ``options["max_num_steps"]`` steps.
    """
    if not isinstance(t0, torch.Tensor):
        t0 = torch.tensor(float(t0), dtype=torch.float64)
    if t0.numel() != 1:
        raise ValueError(f"t0 must hold one time, got shape {tuple(t0.shape)}")
    if not t0.is_floating_point():
        t0 = t0.to(torch.float64)
    step = -1.0 if reverse_time else 1.0
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + step])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    structure = Structure.of(y0)
    last = tuple(s[-1] for s in solution) if structure.is_tuple else solution[-1]
    combined = combine(event_fn, t[0].detach(), y0)
    event_t, state_t = reroute(func, combined, structure, event_t, last)
    state = structure.unflatten(state_t)
    if structure.is_tuple:
        solution = tuple(
            torch.cat([s[:-1], s_t[None]], dim=0) for s, s_t in zip(solution, state, strict=True)
        )
    else:
        solution = torch.cat([solution[:-1], state[None]], dim=0)
    return event_t, solution
