"""Gradient methods (``gradient=``) and their registry."""

from __future__ import annotations

from .base import REGISTRY, GradientMethod, register, resolve
from .binomial import Binomial
from .checkpoint import Checkpoint
from .direct import Direct
from .mali import Mali, ReconstructionDriftWarning

__all__ = [
    "REGISTRY",
    "Binomial",
    "Checkpoint",
    "Direct",
    "Mali",
    "ReconstructionDriftWarning",
    "GradientMethod",
    "register",
    "resolve",
]
