"""The gradient-method contract and its registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._loop import Problem, StepRecord
from .._solution import SolveStats
from ..solvers.base import Solver


@dataclass(frozen=True)
class GradientMethod:
    """Base class of the ``gradient=`` configurations.

    A gradient method owns the integration: ``run`` drives the shared loop and returns outputs
    that are connected to ``y0`` and ``params`` by autograd (directly, or through one custom
    ``torch.autograd.Function``).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()

    def check(self, solver: Solver, problem_is_fixed: bool) -> None:
        """Raise ``ValueError`` when this gradient method cannot be used with ``solver``."""

    def run(
        self,
        problem: Problem,
        y0: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        stats: SolveStats,
    ) -> tuple[list[torch.Tensor], StepRecord]:
        """Solve and return the outputs (flat tensors) and the accepted grid."""
        raise NotImplementedError


REGISTRY: dict[str, type[GradientMethod]] = {}


def register(cls: type[GradientMethod]) -> type[GradientMethod]:
    """Class decorator adding a gradient method (and its aliases) to the registry."""
    for key in (cls.name, *cls.aliases):
        REGISTRY[key] = cls
    return cls


def resolve(gradient: Any) -> GradientMethod:
    """Turn ``gradient=`` (a name, an alias or a configuration object) into a configuration."""
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, str):
        cls = REGISTRY.get(gradient.lower())
        if cls is None:
            names = sorted({c.name for c in REGISTRY.values()})
            aliases = sorted(a for c in set(REGISTRY.values()) for a in c.aliases)
            raise ValueError(
                f"unknown gradient method {gradient!r}; valid ones are {names} "
                f"(aliases {aliases}), or a configuration object such as torchmali.Mali()"
            )
        return cls()
    raise TypeError(
        "gradient must be a name such as 'mali' or a configuration object such as "
        f"torchmali.Binomial(checkpoints=8), got {type(gradient).__name__}"
    )
