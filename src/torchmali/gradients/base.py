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
    #: the gradient equals direct backpropagation through the same discrete solve (to round-off)
    exact: ClassVar[bool] = True
    #: keeps less than the whole graph of the solve for the backward pass
    memory_efficient: ClassVar[bool] = False
    #: works only with a reversible solver (``solver.reversible``)
    needs_reversible: ClassVar[bool] = False

    def check(self, solver: Solver, problem_is_fixed: bool) -> None:
        """Raise ``ValueError`` when this gradient method cannot be used with ``solver``."""

    def accepts(self, solver: Solver | type[Solver], problem_is_fixed: bool = True) -> bool:
        """Whether :meth:`check` lets this method differentiate solves of ``solver`` (a class,
        built with its defaults, or an instance): the one test behind every list of valid
        (solver, gradient) pairs. A forward-only solver (``scipy_solver``) has no gradient."""
        if getattr(solver, "forward_only", False):
            return False
        try:
            self.check(solver() if isinstance(solver, type) else solver, problem_is_fixed)
        except ValueError:
            return False
        return True

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


def names(*, exact: bool | None = None, memory_efficient: bool | None = None) -> tuple[str, ...]:
    """The canonical names of the registered gradient methods, optionally filtered.

    Order: ``direct`` first, then the approximate methods, then the exact memory-efficient ones
    in registration order — the order of every list of methods (CLI choices, benchmark plans,
    tests), so that a new method appears everywhere with its registry line alone.

    Args:
        exact: keep only methods whose ``exact`` attribute equals this (``None``: all).
        memory_efficient: keep only methods whose ``memory_efficient`` equals this.
    """
    classes = list(dict.fromkeys(REGISTRY.values()))
    classes.sort(key=lambda c: (c.memory_efficient, c.exact))  # stable: registration order
    return tuple(
        c.name
        for c in classes
        if (exact is None or c.exact == exact)
        and (memory_efficient is None or c.memory_efficient == memory_efficient)
    )


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
