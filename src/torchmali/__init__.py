"""torchmali: Neural ODEs with exact, memory-efficient gradients.

The public API, re-exported from the private modules:

* :func:`odeint`, :func:`solve` — integrate an ODE (torchdiffeq conventions);
* :func:`odeint_adjoint` — torchdiffeq's adjoint entry point;
* :func:`odeint_event` — integrate until an event, differentiable event time;
* :func:`odeint_dense` — a differentiable dense-output function of one solve;
* gradient methods for ``gradient=``: :class:`Direct`, :class:`Mali`, :class:`Checkpoint`,
  :class:`Binomial`, :class:`Symplectic`, :class:`Adjoint`;
* :class:`Options`, :class:`Solution`, :class:`SolveStats`, :class:`SolverError`;
* :mod:`torchmali.solvers` — the solvers and their registry.
"""

from ._dense import odeint_dense
from ._errors import SolverError
from ._odeint import odeint, solve
from ._odeint_adjoint import odeint_adjoint
from ._odeint_event import odeint_event
from ._options import Options
from ._solution import Solution, SolveStats
from .gradients import (
    Adjoint,
    Binomial,
    Checkpoint,
    Direct,
    GradientMethod,
    Mali,
    ReconstructionDriftWarning,
    Symplectic,
)
from .solvers import ALF, SOLVERS

__version__ = "0.1.0"

__all__ = [
    "ALF",
    "Adjoint",
    "Binomial",
    "Checkpoint",
    "SOLVERS",
    "Direct",
    "GradientMethod",
    "Mali",
    "ReconstructionDriftWarning",
    "Options",
    "Solution",
    "SolveStats",
    "SolverError",
    "Symplectic",
    "__version__",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "solve",
]
