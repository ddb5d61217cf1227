"""Gradient methods (``gradient=``) and their registry.

A gradient method is one file: a configuration class registered with ``@register`` (its name,
aliases, and the attributes ``exact``, ``memory_efficient``, ``needs_reversible`` from which
every list of methods is derived with :func:`names`), plus one import line below. Memory-efficient
methods subclass :class:`~torchmali.gradients._sweep.SweepMethod` and supply a tape (what to
store, how to run the backward sweep); the checkpoint family's per-step VJP is the
``step_vjp`` hook of :class:`~torchmali.gradients._replay.ReplayMethod`.
"""

from __future__ import annotations

from .adjoint import Adjoint
from .base import REGISTRY, GradientMethod, names, register, resolve
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
    "names",
    "register",
    "resolve",
]
