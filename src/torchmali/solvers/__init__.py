"""Solvers and their registry (``method=`` name -> class).

The names are torchdiffeq's (release 0.2.5 and master), plus ``heun`` (= ``heun2``) and the reversible solvers ``alf``,
``reversible_heun`` and ``reversible_rk``.
"""

from __future__ import annotations

from .adams import AdamsBashforth, AdamsBashforthMoulton
from .alf import ALF
from .base import NEXT, PREV, ReversibleSolver, Solver, StepResult
from .config import SolverOption
from .dopri8 import Dopri8
from .explicit import (
    RK4,
    AdaptiveHeun,
    Bosh3,
    Dopri5,
    Euler,
    Fehlberg2,
    Heun,
    Heun3,
    Midpoint,
    Tsit5,
)
from .implicit import IMPLICIT, ImplicitRungeKutta, ImplicitTableau
from .reversible_heun import ReversibleHeun
from .reversible_rk import ReversibleRK
from .scipy_solver import ScipySolver
from .tableau import ButcherTableau, RungeKutta

_CLASSES: tuple[type[Solver], ...] = (
    Euler,
    Midpoint,
    Heun,
    Heun3,
    RK4,
    AdaptiveHeun,
    Fehlberg2,
    Bosh3,
    Dopri5,
    Tsit5,
    Dopri8,
    AdamsBashforth,
    AdamsBashforthMoulton,
    *IMPLICIT,
    ScipySolver,
    ALF,
    ReversibleHeun,
    ReversibleRK,
)
#: Other names torchdiffeq gives the same methods.
ALIASES: dict[str, type[Solver]] = {"heun2": Heun, "fixed_adams": AdamsBashforthMoulton}

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in _CLASSES} | ALIASES
FIXED_GRID_ONLY = tuple(name for name, cls in SOLVERS.items() if not cls.adaptive)

__all__ = [
    "ALF",
    "ALIASES",
    "NEXT",
    "PREV",
    "RK4",
    "SOLVERS",
    "AdamsBashforth",
    "AdamsBashforthMoulton",
    "AdaptiveHeun",
    "Bosh3",
    "ButcherTableau",
    "Dopri5",
    "Dopri8",
    "Euler",
    "Fehlberg2",
    "Heun",
    "Heun3",
    "ImplicitRungeKutta",
    "ImplicitTableau",
    "Midpoint",
    "ReversibleHeun",
    "ReversibleRK",
    "ReversibleSolver",
    "RungeKutta",
    "ScipySolver",
    "Solver",
    "SolverOption",
    "StepResult",
    "Tsit5",
]
