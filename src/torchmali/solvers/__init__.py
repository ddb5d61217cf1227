"""Solvers and their registry (``method=`` name -> class)."""

from __future__ import annotations

from .alf import ALF
from .base import ReversibleSolver, Solver, StepResult
from .explicit import RK4, AdaptiveHeun, Bosh3, Dopri5, Euler, Heun, Midpoint, Tsit5
from .reversible_heun import ReversibleHeun
from .reversible_rk import ReversibleRK
from .tableau import ButcherTableau, RungeKutta

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls
    for cls in (
        Euler,
        Midpoint,
        Heun,
        RK4,
        AdaptiveHeun,
        Bosh3,
        Dopri5,
        Tsit5,
        ALF,
        ReversibleHeun,
        ReversibleRK,
    )
}
FIXED_GRID_ONLY = tuple(name for name, cls in SOLVERS.items() if not cls.adaptive)

__all__ = [
    "ALF",
    "RK4",
    "SOLVERS",
    "AdaptiveHeun",
    "Bosh3",
    "ButcherTableau",
    "Dopri5",
    "Euler",
    "Heun",
    "Midpoint",
    "ReversibleHeun",
    "ReversibleRK",
    "ReversibleSolver",
    "RungeKutta",
    "Solver",
    "StepResult",
    "Tsit5",
]
