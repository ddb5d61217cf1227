"""The explicit Runge–Kutta solvers: fixed-grid and adaptive tableaus (torchdiffeq's set).

Each class is a tableau plus its order; the generic step, its ``perturb`` hints and the dense
output live in :mod:`.tableau`. The adaptive tableaus carry their last stage to the next step
and interpolate output times with torchdiffeq's quartic, so the same steps give torchdiffeq's
outputs (see ``test_solvers_torchdiffeq.py``).
"""

from __future__ import annotations

import torch

from .base import StepResult
from .tableau import ButcherTableau, RungeKutta, hermite, lincomb


class Euler(RungeKutta):
    """Forward Euler. Order 1, one evaluation per step, fixed grid only."""

    name = "euler"
    order = 1
    tableau = ButcherTableau(c=(0.0,), a=((),), b=(1.0,))


class Midpoint(RungeKutta):
    """Explicit midpoint rule. Order 2, two evaluations per step, fixed grid only."""

    name = "midpoint"
    order = 2
    tableau = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))


class Heun(RungeKutta):
    """Heun's method (explicit trapezoid). Order 2, two evaluations per step, fixed grid only."""

    name = "heun"
    order = 2
    tableau = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))


class Heun3(RungeKutta):
    """Heun's third-order method. Order 3, three evaluations per step, fixed grid only."""

    name = "heun3"
    order = 3
    tableau = ButcherTableau(
        c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4)
    )


class RK4(RungeKutta):
    """Kutta's 3/8-rule fourth-order method (torchdiffeq's ``rk4``). Order 4, four evaluations.

    The 3/8 rule (nodes 0, 1/3, 2/3, 1) has a smaller error constant than the classical
    midpoint variant; it is what ``torchdiffeq.odeint(method="rk4")`` computes.
    """

    name = "rk4"
    order = 4
    tableau = ButcherTableau(
        c=(0.0, 1 / 3, 2 / 3, 1.0),
        a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    )


class AdaptiveHeun(RungeKutta):
    """Heun's method with an embedded Euler error estimate. Order 2, adaptive.

    One new evaluation per step: the Euler predictor's ``f(t0 + h, y0 + h k0)`` is carried to
    the next step as its first stage (torchdiffeq's convention; the method stays second order).
    """

    name = "adaptive_heun"
    order = 2
    error_order = 2
    tableau = ButcherTableau(
        c=(0.0, 1.0),
        a=((), (1.0,)),
        b=(0.5, 0.5),
        b_error=(0.5, -0.5),
        fsal=True,
        c_mid=(0.5, 0.0),
    )


class Fehlberg2(RungeKutta):
    """Runge–Kutta–Fehlberg 1(2), propagating the second-order solution. Order 2, adaptive.

    Two new evaluations per step; the last stage, at the first-order solution, is carried to
    the next step as its first stage (torchdiffeq's ``fehlberg2``).
    """

    name = "fehlberg2"
    order = 2
    error_order = 2
    tableau = ButcherTableau(
        c=(0.0, 0.5, 1.0),
        a=((), (0.5,), (1 / 256, 255 / 256)),
        b=(1 / 512, 255 / 256, 1 / 512),
        b_error=(-1 / 512, 0.0, 1 / 512),
        fsal=True,
        c_mid=(0.0, 0.5, 0.0),
    )


class Bosh3(RungeKutta):
    """Bogacki–Shampine 3(2), first-same-as-last. Order 3, three new evaluations per step.

    Dense output: the cubic Hermite interpolant through ``(y0, f0)`` and ``(y1, f1)``, third
    order like the method (Bogacki & Shampine's own, MATLAB's ``ode23``). torchdiffeq fits a
    quartic through a mid-point value that is only second order: on Lotka–Volterra its interior
    outputs miss ``rtol`` by up to 360x (measured, ``test_solvers_torchdiffeq.py``), ours by 3x.
    """

    name = "bosh3"
    order = 3
    error_order = 3
    dense_output = True
    tableau = ButcherTableau(
        c=(0.0, 0.5, 0.75, 1.0),
        a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
        b=(2 / 9, 1 / 3, 4 / 9, 0.0),
        b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
        fsal=True,
    )

    def interpolate(
        self, t0: float, h: float, y0: torch.Tensor, result: StepResult, t: float
    ) -> torch.Tensor:
        return hermite(y0, result.y1, result.dense[0], result.dense[-1], h, (t - t0) / h)


# Shampine's (1986) continuous extension of Dormand–Prince 5(4), fourth-order dense output.
_DOPRI5_DENSE = (
    -12715105075 / 11282082432,
    0.0,
    87487479700 / 32700410799,
    -10690763975 / 1880347072,
    701980252875 / 199316789632,
    -1453857185 / 822651844,
    69997945 / 29380423,
)


class Dopri5(RungeKutta):
    """Dormand–Prince 5(4) with first-same-as-last reuse and 4th-order dense output.

    The error estimate is that of Shampine's embedded solution, as in torchdiffeq.

    Order 5, six new evaluations per accepted step. Output times inside a step are interpolated,
    so requested outputs never shorten the steps.
    """

    name = "dopri5"
    order = 5
    error_order = 5
    dense_output = True  # Shampine's, equal to torchdiffeq's quartic fit to round-off
    tableau = ButcherTableau(
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        a=(
            (),
            (1 / 5,),
            (3 / 40, 9 / 40),
            (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
            (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
        ),
        b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
        # Shampine's (1986) embedded fourth-order solution (torchdiffeq's): 2/3 of the
        # estimate of Dormand and Prince's own pair.
        b_error=(
            35 / 384 - 1951 / 21600,
            0.0,
            500 / 1113 - 22642 / 50085,
            125 / 192 - 451 / 720,
            -2187 / 6784 + 12231 / 42400,
            11 / 84 - 649 / 6300,
            -1 / 60,
        ),
        fsal=True,
    )

    def interpolate(
        self, t0: float, h: float, y0: torch.Tensor, result: StepResult, t: float
    ) -> torch.Tensor:
        ks = result.dense
        theta = (t - t0) / h
        r2 = result.y1 - y0
        r3 = torch.add(-r2, ks[0], alpha=h)  # h k1 - (y1 - y0)
        r4 = torch.add(r2 - r3, ks[-1], alpha=-h)  # (y1 - y0) - h k7 - r3
        r5 = lincomb(torch.zeros_like(y0), h, _DOPRI5_DENSE, ks)
        inner = torch.add(r4, r5, alpha=1.0 - theta)
        inner = torch.add(r3, inner, alpha=theta)
        inner = torch.add(r2, inner, alpha=1.0 - theta)
        return torch.add(y0, inner, alpha=theta)


# Tsitouras (2011) 5(4) pair, first-same-as-last (coefficients from the paper, double precision).
_TS_A = (
    (),
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (
        5.86145544294642,
        -12.92096931784711,
        8.159367898576159,
        -0.071584973281401,
        -0.028269050394068383,
    ),
    (
        0.09646076681806523,
        0.01,
        0.4798896504144996,
        1.379008574103742,
        -3.290069515436081,
        2.324710524099774,
    ),
)
_TS_B_HAT = (
    0.09468075576583945,
    0.009183565540343254,
    0.4877705284247616,
    1.234297566930479,
    -2.7077123499835256,
    1.866628418170587,
    1 / 66,
)


def tsit5_dense_weights(theta: float) -> tuple[float, ...]:
    """Tsitouras's continuous extension: ``y(t0 + θh) ≈ y0 + h Σ b_i(θ) k_i`` (4th order).

    ``b_i(1)`` are the propagated (5th-order) weights; ``b_i(1/2)`` give the mid-point value of
    the dense output (the polynomials of Tsitouras 2011, as in OrdinaryDiffEq.jl and diffrax).
    """
    x = theta
    return (
        -1.0530884977290216
        * x
        * (x - 1.329989018975412)
        * (x * x - 1.4364028541716351 * x + 0.7139816917074209),
        0.1017 * x * x * (x * x - 2.1966568338249754 * x + 1.2949852507374631),
        2.490627285651252793 * x * x * (x * x - 2.38535645472061657 * x + 1.57803468208092486),
        -16.54810288924490272 * (x - 1.21712927295533244) * (x - 0.61620406037800089) * x * x,
        47.37952196281928122 * (x - 1.203071208372362603) * (x - 0.658047292653547382) * x * x,
        -34.87065786149660974 * (x - 1.2) * (x - 2 / 3) * x * x,
        2.5 * (x - 1) * (x - 0.6) * x * x,
    )


class Tsit5(RungeKutta):
    """Tsitouras 5(4), first-same-as-last. Order 5, six new evaluations per accepted step.

    Dense output: torchdiffeq's quartic with the mid-point value of Tsitouras's continuous
    extension, as torchdiffeq's master has it. Unlike torchdiffeq's master, which propagates
    the embedded 4th-order solution (measured convergence order 4), ``y1`` is the 5th-order
    solution of the pair, as in Tsitouras (2011), OrdinaryDiffEq.jl and diffrax.
    """

    name = "tsit5"
    order = 5
    error_order = 5
    tableau = ButcherTableau(
        c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
        a=_TS_A,
        b=_TS_A[-1] + (0.0,),
        b_error=tuple(b - bh for b, bh in zip(_TS_A[-1] + (0.0,), _TS_B_HAT, strict=True)),
        fsal=True,
        c_mid=tsit5_dense_weights(0.5),
    )
