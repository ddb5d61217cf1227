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
then amplifies the parasitic mode by ``1/|1 − 2η|`` per step, so MALI's reconstruction drifts:
``gradient="mali"`` stores a point every K steps to bound it (K = 35 at η = 0.75 in float64, 6
in float32) and recomputes exactly any segment that still drifts, or the whole solve when the
parasitic mode has blown up (see :class:`torchmali.Mali`). The gradient is then exact, but the
forward solution is still ALF's: use ALF on short horizons or on dynamics without strongly
dissipative modes (measured stability: docs/gradients.md, "Reversible solvers").

The backward pass of MALI (the reversible-solver contract of :class:`ReversibleSolver`) is here
too: the fused backward step and a faster sweep over the whole grid (:class:`ALFReverseSweep`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._vjp import add_into, vjp
from .base import BackwardStep, Func, ReverseSweep, ReversibleSolver, StepResult


class ALF(ReversibleSolver):
    """Asynchronous leapfrog with damping ``eta``; reversible, one evaluation per step.

    Args:
        eta: the damping coefficient η in ``(0, 1]``; 1 (undamped, second order) by default.
            η = 1/2 is not invertible and is refused.
    """

    name = "alf"
    title = "ALF"
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

    def backward_step(
        self,
        f: Func,
        t0: float,
        h: float,
        y1: torch.Tensor,
        state1: torch.Tensor,
        cot_y1: torch.Tensor,
        cot_state1: torch.Tensor | None,
        params: Sequence[torch.Tensor],
    ) -> BackwardStep:
        """The fused reverse step (one evaluation with graph, one VJP). With ``(ā_z, ā_v)`` the
        cotangents of ``(z_out, v_out)`` and ``g = ā_v + (h/2) ā_z`` that of ``v_out`` in total::

            k̄ = ā_z + VJP of u at k with 2η g,   ā_v_in = (1 − 2η) g + (h/2) k̄
        """
        eta = self.eta
        k = torch.add(y1, state1, alpha=-0.5 * h)
        with torch.enable_grad():
            k_in = k.detach().requires_grad_(True)
            u = f(t0 + 0.5 * h, k_in)
        v0 = self.reconstruct_velocity(u.detach(), state1)
        z0 = torch.add(k, v0, alpha=-0.5 * h)
        if cot_state1 is None:
            g = torch.mul(cot_y1, 0.5 * h)
        else:
            g = torch.add(cot_state1, cot_y1, alpha=0.5 * h)
        k_bar, *p_bar = vjp((u,), (k_in, *params), (torch.mul(g, 2.0 * eta),))
        k_bar = k_bar.add_(cot_y1)
        a_v0 = g.mul_(1.0 - 2.0 * eta).add_(k_bar, alpha=0.5 * h)
        return BackwardStep(y0=z0, state0=v0, cot_y0=k_bar, cot_state0=a_v0, param_grads=p_bar)

    def inverse_amplification(self) -> float:
        """``1/|1 − 2η|``: 1 for η = 1, 2 for η = 0.75, 10 for η = 0.55."""
        return 1.0 / abs(1.0 - 2.0 * self.eta)

    def reverse_sweep(
        self, f: Func, params: Sequence[torch.Tensor], y1: torch.Tensor, state1: torch.Tensor
    ) -> ALFReverseSweep:
        return ALFReverseSweep(self, f, params, y1, state1)

    def drift_hint(self) -> str:
        if self.eta == 1.0:
            return (
                "With eta=1 the inverse step is exact, but it expands round-off wherever the "
                "dynamics contract (SolveStats.parasitic measures the contraction's parasitic "
                "mode): use float64"
            )
        return (
            f"Damped ALF (eta={self.eta:g}) amplifies round-off in reverse by "
            f"1/|1-2*eta| = {self.inverse_amplification():.3g} per step: use eta=1"
        )

    def consistency_message(self, tol: float) -> str:
        return (
            f"ALF's parasitic mode at the final time exceeds parasitic_tol={tol:.3g} times the "
            "derivative (SolveStats.parasitic): ALF with eta=1 is unstable on dissipative "
            "dynamics, so the forward solution is far from the ODE's (MALI's gradient is exact "
            "for this discrete solve, not for the ODE). Use a shorter horizon, a fixed step "
            "(adaptive steps shrink without end), damping (options={'eta': 0.9}) on short "
            "horizons, or another solver with gradient='checkpoint'"
        )

    def reconstruct_velocity(self, u: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """``v_in = (v_out − 2η u) / (1 − 2η)``, i.e. ``2u − v_out`` for η = 1."""
        if self.eta == 1.0:
            return _two_u_minus(u, v1)
        return torch.lerp(u, v1, 1.0 / (1.0 - 2.0 * self.eta))  # u + (v_out − u) / (1 − 2η)


def _two_u_minus(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``2u − v`` with a single rounding (``2u`` is exact), so η = 1 steps invert to round-off."""
    return torch.add(v, u, alpha=-2.0).neg_()


class ALFReverseSweep(ReverseSweep):
    """ALF's backward sweep, as a recurrence cheaper than repeated :meth:`ALF.backward_step`.

    Per step: one evaluation with graph, one VJP and four in-place updates of state-sized tensors.
    Instead of ``ā_v`` it carries the cotangent of the step's evaluation ``u``,
    ``cu = 2η (ā_v + h/2 ā_z)``, which obeys ``cu_i = (1 − 2η) cu_{i+1} + η (h_{i+1} + h_i) ā_z``;
    for η = 1 it stores the velocity with an alternating sign (``v_in = 2u − v_out`` becomes one
    ``add``, still a single rounding). Equal to the step-by-step form to round-off (tested).

    It also measures ALF's parasitic mode at no extra evaluation: ``f(t_N, z_N)`` is
    extrapolated from the first two evaluations of the sweep and compared with ``v_N``.
    """

    checks_consistency = True

    def __init__(self, solver: ALF, f: Func, params, y1: torch.Tensor, state1: torch.Tensor):
        super().__init__(solver, f, params, y1, state1)
        self.eta = solver.eta
        self.undamped = solver.eta == 1.0
        self.sign = 1.0  # the velocity is sign * self.state
        self.cu: torch.Tensor | None = None
        self.h_next = 0.0
        self.v_final = state1
        self.n = 0  # steps reversed
        self.u_last: torch.Tensor | None = None
        self.gaps: list[torch.Tensor] = []
        self.a_v: torch.Tensor | None = None  # ā_v given by restart(), folded into the next cu

    def step(self, t0: float, h: float, cot: torch.Tensor | None = None, start: Any = None) -> None:
        eta, a_z, cu = self.eta, self.cot_y, self.cu
        if cu is None:
            if cot is not None:
                a_z.add_(cot)
            cu = torch.mul(a_z, eta * h)
            if self.a_v is not None:
                cu.add_(self.a_v, alpha=2.0 * eta)
                self.a_v = None
        elif cot is not None:
            cu.mul_(1.0 - 2.0 * eta).add_(a_z, alpha=eta * self.h_next)
            a_z.add_(cot)
            cu.add_(a_z, alpha=eta * h)
        else:
            cu.mul_(1.0 - 2.0 * eta).add_(a_z, alpha=eta * (self.h_next + h))
        self.cu = cu
        sign = self.sign
        k = torch.add(self.y, self.state, alpha=-0.5 * h * sign)
        with torch.enable_grad():
            k_in = k.detach().requires_grad_(True)
            u = self.f(t0 + 0.5 * h, k_in)
        u_value = u.detach()
        if self.n == 0:
            self.u_last, self.h_last = u_value.clone(), h  # k is updated in place below
        elif self.n == 1:
            self.gaps = _parasitic_gap(self.v_final, self.u_last, u_value, self.h_last, h)
        if self.undamped:
            self.state, self.sign = torch.add(self.state, u_value, alpha=-2.0 * sign), -sign
        else:
            self.state = self.solver.reconstruct_velocity(u_value, self.state)
        k_bar, *p_bar = vjp((u,), (k_in, *self.params), (cu,))
        del u, u_value  # free this evaluation's graph before the next one is built
        add_into(self.param_grads, p_bar)
        a_z.add_(k_bar)
        self.y = k.add_(self.state, alpha=-0.5 * h * self.sign)
        self.h_next = h
        self.n += 1

    def point(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.y, self.state if self.sign > 0 else -self.state

    def restart(self, y: torch.Tensor, state: torch.Tensor, cotangents=None) -> None:
        self.y, self.state, self.sign = y, state, 1.0
        if cotangents is not None:
            self.cot_y, self.a_v, self.cu = cotangents[0].clone(), cotangents[1], None

    def cotangents(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # the cotangent of v: (1 − 2η) ā_v_out' + h/2 ā_z = cu (1 − 2η)/(2η) + h/2 ā_z
        if self.cu is None:
            return self.cot_y.clone(), self.a_v
        eta = self.eta
        cu = self.cu.mul((1.0 - 2.0 * eta) / (2.0 * eta))
        return self.cot_y.clone(), cu.add_(self.cot_y, alpha=0.5 * self.h_next)

    def consistency(self) -> list[torch.Tensor]:
        return self.gaps


def _parasitic_gap(
    v_n: torch.Tensor, u_n: torch.Tensor, u_prev: torch.Tensor, h_n: float, h_prev: float
) -> list[torch.Tensor]:
    """Norms of ``v_N − f̂`` and ``f̂``, ``f̂ ≈ f(t_N, z_N)`` extrapolated linearly from the last two
    midpoint evaluations (no extra evaluation; the error of ``f̂`` is ``O(h²)``)."""
    f_hat = torch.add(u_n, u_n - u_prev, alpha=h_n / (h_n + h_prev))
    return [torch.linalg.vector_norm(v_n - f_hat), torch.linalg.vector_norm(f_hat)]
