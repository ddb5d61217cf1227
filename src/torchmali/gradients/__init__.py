"""Gradient methods (``gradient=``) and their registry."""

from __future__ import annotations

from .adjoint import Adjoint
from .base import REGISTRY, GradientMethod, register, resolve
from .binomial import Binomial
from .checkpoint import Checkpoint
from .direct import Direct
from .mali import Mali, ReconstructionDriftWarning
from .symplectic import Symplectic

__all__ = [
    "REGISTRY",
    "Adjoint",
    "Binomial",
    "Checkpoint",
    "Direct",
    "Mali",
    "ReconstructionDriftWarning",
    "Symplectic",
    "GradientMethod",
    "register",
    "resolve",
]
