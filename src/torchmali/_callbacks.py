"""torchdiffeq's step callbacks: ``callback_step``, ``callback_accept_step``, ``callback_reject_step``.

A ``func`` that has these attributes gets them called as torchdiffeq calls them, each as
``callback(t0, y0, dt)``:

* ``callback_step`` before every attempted step (fixed grids: every step), with the step size
  proposed by the controller;
* ``callback_accept_step`` / ``callback_reject_step`` after an adaptive trial step is accepted /
  rejected, with the step size actually tried;

where ``t0`` is the start of the step in the user's time (a 0-dim tensor: float64 in adaptive
solves, the dtype of ``t`` on fixed grids), ``y0`` the state there in the structure of ``y0``
(a tuple for a tuple state) and ``dt > 0`` the step's length (a 0-dim tensor, positive also when
``t`` decreases). Fixed-grid solves support only ``callback_step``; asking for the others warns
("Solver ... does not support callbacks ..."), as in torchdiffeq.

The ``*_adjoint`` variants are called the same way during the backward solve of
``gradient="adjoint"`` (``odeint_adjoint``), with ``y0`` the augmented state
``(y, adj_y, *adj_params)`` (torchdiffeq also passes the time adjoint first; torchmali computes
time gradients separately and leaves it out).

Callbacks fire once per step of the solve that takes the step: gradient methods that recompute
steps in their backward pass (``checkpoint``, ``binomial``, ``mali``) never call them again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_NAMES = tuple(name + "_adjoint" for name in NAMES)


@dataclass
class Callbacks:
    """The callbacks of one solve, with the conversions to the user's time and structure."""

    step: Callable | None
    accept: Callable | None
    reject: Callable | None
    sign: float
    t_dtype: torch.dtype
    device: torch.device
    to_user: Callable[[torch.Tensor], Any]

    def _args(self, t: float, y: torch.Tensor, h: float) -> tuple:
        t0 = torch.tensor(self.sign * t, dtype=self.t_dtype, device=self.device)
        dt = torch.tensor(h, dtype=self.t_dtype, device=self.device)
        return t0, self.to_user(y), dt

    def on_step(self, t: float, y: torch.Tensor, h: float) -> None:
        if self.step is not None:
            self.step(*self._args(t, y, h))

    def on_accept(self, t: float, y: torch.Tensor, h: float) -> None:
        if self.accept is not None:
            self.accept(*self._args(t, y, h))

    def on_reject(self, t: float, y: torch.Tensor, h: float) -> None:
        if self.reject is not None:
            self.reject(*self._args(t, y, h))


def supported(solver: Any, fixed: bool) -> frozenset[str]:
    """The callbacks a solve supports: all three when adaptive, ``callback_step`` on a fixed
    grid; a solver class may restrict them with a ``valid_callbacks`` attribute."""
    own = getattr(solver, "valid_callbacks", None)
    if own is not None:
        return frozenset(own)
    return frozenset({"callback_step"}) if fixed else frozenset(NAMES)


def resolve(
    func: Any,
    names: tuple[str, ...],
    *,
    method: str,
    valid: frozenset[str],
    sign: float,
    t_dtype: torch.dtype,
    device: torch.device,
    to_user: Callable[[torch.Tensor], Any],
) -> Callbacks | None:
    """The callbacks ``func`` defines under ``names`` (the plain or the ``_adjoint`` ones).

    Returns ``None`` when it defines none, so that solves without callbacks pay nothing. Warns,
    as torchdiffeq does, about callbacks this solve does not support (they are not called).
    """
    found = {}
    for name, base in zip(names, NAMES, strict=True):
        cb = getattr(func, name, None)
        if cb is None:
            continue
        if not callable(cb):
            raise TypeError(f"func.{name} must be callable as {name}(t0, y0, dt)")
        found[base] = cb
    if not found:
        return None
    invalid = {n for n, base in zip(names, NAMES, strict=True) if base in found} - {
        n for n, base in zip(names, NAMES, strict=True) if base in valid
    }
    if invalid:
        warnings.warn(
            f"Solver '{method}' does not support callbacks {invalid}", UserWarning, stacklevel=4
        )
    return Callbacks(
        step=found.get("callback_step") if "callback_step" in valid else None,
        accept=found.get("callback_accept_step") if "callback_accept_step" in valid else None,
        reject=found.get("callback_reject_step") if "callback_reject_step" in valid else None,
        sign=sign,
        t_dtype=t_dtype,
        device=device,
        to_user=to_user,
    )
