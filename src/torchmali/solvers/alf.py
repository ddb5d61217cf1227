"""The asynchronous leapfrog (ALF) solver of MALI (Zhuang et al., ICLR 2021).

The state is the pair ``(z, v)`` with ``v ≈ dz/dt``, ``v0 = f(t0, z0)``; users only see ``z``.
One step from ``t`` to ``t + h`` costs one evaluation of ``f``::

    k     = z + (h/2) v
    u     = f(t + h/2, k)
    v_out = v + 2η (u − v)
    z_out = k + (h/2) v_out

and has the exact algebraic inverse (one evaluation, at the same point ``k``)::

    k    = z_out − (h/2) v_out
    u    = f(t + h/2, k)
    v_in = (v_out − 2η u) / (1 − 2η)
    z_in = k − (h/2) v_in

Order 2 for η = 1 (first order for η ≠ 1). The adaptive variant uses the free error estimate
``h (u − v_in)`` with controller exponent 1/2.

Warning — stability: with η = 1, ALF is stable only for ``hλ`` on the imaginary segment
``(−i, i)``. For any dissipative mode (``Re λ < 0``) the parasitic root grows like ``e^{|λ|T}``
whatever the step size: for ``z' = −z`` on ``T = 20`` with ``h = 0.05`` ALF returns
``z(T) ≈ −187`` instead of ``2e-9``. Damping (``η < 1``) cures the forward pass, but the inverse
then amplifies the parasitic mode by ``1/|1 − 2η|`` per step, so MALI's reconstruction drifts;
``gradient="mali"`` measures that drift and can warn or raise (see :class:`torchmali.Mali`).
Use ALF on short horizons or on dynamics without strongly dissipative modes.
"""

from __future__ import annotations

import math

import torch

from .base import Func, ReversibleSolver, StepResult


class ALF(ReversibleSolver):
    """Asynchronous leapfrog with damping ``eta``; reversible, one evaluation per step.

    Args:
        eta: the damping coefficient η in ``(0, 1]``; 1 (undamped, second order) by default.
            η = 1/2 is not invertible and is refused.
    """

    name = "alf"
    order = 2
    adaptive = True
    error_order = 2

    def __init__(self, eta: float = 1.0) -> None:
        eta = float(eta)
        if not math.isfinite(eta) or eta <= 0.0 or eta > 1.0:
            raise ValueError(f"ALF damping eta must be in (0, 1], got {eta}")
        if eta == 0.5:
            raise ValueError(
                "ALF damping eta = 0.5 makes the step non-invertible (1 - 2*eta = 0); "
                "use eta = 1.0 (default) or a value away from 0.5"
            )
        self.eta = eta
        if eta != 1.0:
            self.order = 1

    def __repr__(self) -> str:
        return f"ALF(eta={self.eta})"

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> torch.Tensor:
        return f(t0, y0)

    def derivative(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def step(
        self,
        f: Func,
        t0: float,
        h: float,
        y0: torch.Tensor,
        state: torch.Tensor,
        with_error: bool = True,
    ):
        v = state
        k = torch.add(y0, v, alpha=0.5 * h)
        u = f(t0 + 0.5 * h, k)
        v1 = _two_u_minus(u, v) if self.eta == 1.0 else torch.lerp(v, u, 2.0 * self.eta)
        z1 = torch.add(k, v1, alpha=0.5 * h)
        error = torch.sub(u, v).mul_(h) if with_error else None
        return StepResult(y1=z1, error=error, state1=v1, dense=None)

    def inverse(self, f: Func, t1: float, h: float, y1: torch.Tensor, state1: torch.Tensor):
        k = torch.add(y1, state1, alpha=-0.5 * h)
        u = f(t1 - 0.5 * h, k)
        v0 = self.reconstruct_velocity(u, state1)
        z0 = torch.add(k, v0, alpha=-0.5 * h)
        return z0, v0

    def reconstruct_velocity(self, u: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """``v_in = (v_out − 2η u) / (1 − 2η)``, i.e. ``2u − v_out`` for η = 1."""
        if self.eta == 1.0:
            return _two_u_minus(u, v1)
        return torch.lerp(u, v1, 1.0 / (1.0 - 2.0 * self.eta))  # u + (v_out − u) / (1 − 2η)


def _two_u_minus(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``2u − v`` with a single rounding (``2u`` is exact), so η = 1 steps invert to round-off."""
    return torch.add(v, u, alpha=-2.0).neg_()
