"""The explicit Runge–Kutta solvers: four fixed-grid and four adaptive methods.

Each class is a tableau plus its order; the generic step lives in :mod:`.tableau`.
"""

from __future__ import annotations

import torch

from .base import StepResult
from .tableau import ButcherTableau, RungeKutta, lincomb


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


class RK4(RungeKutta):
    """The classical 3/8-free fourth-order Runge–Kutta method. Order 4, four evaluations per step."""

    name = "rk4"
    order = 4
    tableau = ButcherTableau(
        c=(0.0, 0.5, 0.5, 1.0),
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    )


class AdaptiveHeun(RungeKutta):
    """Heun's method with an embedded Euler error estimate. Order 2, adaptive."""

    name = "adaptive_heun"
    order = 2
    error_order = 2
    tableau = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), b_error=(-0.5, 0.5))


class Bosh3(RungeKutta):
    """Bogacki–Shampine 3(2), first-same-as-last. Order 3, three new evaluations per step."""

    name = "bosh3"
    order = 3
    error_order = 3
    tableau = ButcherTableau(
        c=(0.0, 0.5, 0.75, 1.0),
        a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
        b=(2 / 9, 1 / 3, 4 / 9, 0.0),
        b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
        fsal=True,
    )


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

    Order 5, six new evaluations per accepted step. Output times inside a step are interpolated,
    so requested outputs never shorten the steps.
    """

    name = "dopri5"
    order = 5
    error_order = 5
    dense_output = True
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
        b_error=(
            71 / 57600,
            0.0,
            -71 / 16695,
            71 / 1920,
            -17253 / 339200,
            22 / 525,
            -1 / 40,
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


class Tsit5(RungeKutta):
    """Tsitouras 5(4), first-same-as-last. Order 5, six new evaluations per accepted step.

    No dense output: the grid is shortened to land on every requested output time.
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
    )
