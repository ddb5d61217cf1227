"""``ODEBlock``: an ``nn.Module`` that integrates its input with :func:`torchmali.solve`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

import torchmali
from torchmali.gradients import resolve

__all__ = ["ODEBlock", "default_method", "is_mali"]


def is_mali(gradient: Any) -> bool:
    """Whether ``gradient`` (a name or a configuration object) selects the MALI gradient."""
    return _resolved(gradient).__class__ is torchmali.Mali


def default_method(gradient: Any) -> str | None:
    """The solver ``ODEBlock`` uses when ``method=None``: the first reversible solver of the
    registry (``"alf"``) for a gradient method that needs one, else the library default."""
    if not _resolved(gradient).needs_reversible:
        return None
    return next(name for name, cls in torchmali.SOLVERS.items() if cls.reversible)


def _resolved(gradient: Any) -> Any:
    try:
        return resolve(gradient)
    except (TypeError, ValueError):
        return None  # an invalid gradient is reported by torchmali.solve, with the fix


class ODEBlock(nn.Module):
    """Integrate ``dy/dt = func(t, y)`` from ``t[0]`` to ``t[-1]`` and return the final state.

    The block is a thin, stateless wrapper around :func:`torchmali.solve`: every argument except
    ``func`` and ``t`` is passed through unchanged. The statistics of the most recent solve
    (function evaluations, accepted / rejected steps, memory; the backward fields once
    ``.backward()`` has run) are kept in :attr:`last_stats`; set :attr:`stats_log` to a list to
    collect the statistics of every solve (e.g. the many small solves of an ODE-RNN).

    Args:
        func: The vector field, called as ``func(t, y)``. An ``nn.Module`` is registered as a
            submodule, so its parameters belong to the block.
        t: The integration interval ``(t0, t1)`` (or more output times; only the last state is
            returned by :meth:`forward` unless ``t`` is given there).
        method: Solver name. ``None`` picks a reversible solver (``"alf"``) for a gradient method
            that needs one (``"mali"``) and the library default otherwise.
        gradient: Gradient method, a name of ``torchmali.gradients.names()`` (``"direct"``,
            ``"adjoint"``, ``"checkpoint"``, ``"binomial"``, ``"mali"``, ...) or a configuration
            object.
        rtol: Relative tolerance of adaptive solvers.
        atol: Absolute tolerance of adaptive solvers.
        options: Solver options, e.g. ``{"step_size": 0.25}`` for a fixed grid or ``{"eta": 1.0}``
            for ALF's damping.
        params: Parameters to differentiate when ``func`` is not an ``nn.Module`` itself but
            closes over one; ``None`` lets the library use ``func.parameters()``.

    Raises:
        ValueError: If ``t`` has fewer than two time points.
    """

    def __init__(
        self,
        func: Callable[[torch.Tensor, Any], Any],
        t: Sequence[float] = (0.0, 1.0),
        method: str | None = None,
        gradient: Any = "direct",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        options: dict[str, Any] | None = None,
        params: Iterable[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        times = [float(x) for x in t]
        if len(times) < 2:
            raise ValueError(
                f"ODEBlock needs at least two time points, got t={tuple(t)}; "
                "pass e.g. t=(0.0, 1.0)."
            )
        self.func = func
        self.t = tuple(times)
        self.method = method if method is not None else default_method(gradient)
        self.gradient = gradient
        self.rtol = rtol
        self.atol = atol
        self.options = dict(options) if options else None
        self._params = None if params is None else list(params)
        self.last_stats: Any = None
        self.stats_log: list[Any] | None = None

    def _time(self, like: torch.Tensor, t: Any) -> torch.Tensor:
        t = self.t if t is None else t
        if isinstance(t, torch.Tensor):
            return t.to(device=like.device)
        return torch.tensor(t, dtype=like.dtype, device=like.device)

    def solve(self, y0: Any, t: Any = None) -> Any:
        """Solve from ``y0`` and return the full :class:`torchmali.Solution`.

        Args:
            y0: Initial state, a tensor or a tuple of tensors.
            t: Output times overriding the block's ``t`` (a sequence or a 1-D tensor).

        Returns:
            The solution; its ``ys`` has the output times stacked along the first dimension.
        """
        leaf = y0[0] if isinstance(y0, (tuple, list)) else y0
        kwargs: dict[str, Any] = {"gradient": self.gradient}
        if self._params is not None:
            kwargs["params"] = self._params
        sol = torchmali.solve(
            self.func,
            y0,
            self._time(leaf, t),
            rtol=self.rtol,
            atol=self.atol,
            method=self.method,
            options=self.options,
            **kwargs,
        )
        self.last_stats = sol.stats
        if self.stats_log is not None:
            self.stats_log.append(sol.stats)
        return sol

    def forward(self, y0: Any, t: Any = None) -> Any:
        """Integrate ``y0``.

        Args:
            y0: Initial state, a tensor or a tuple of tensors.
            t: Optional output times. When given, the whole trajectory (times stacked along a new
                leading dimension) is returned instead of the final state.

        Returns:
            The state at the final time, or the trajectory when ``t`` is given.
        """
        ys = self.solve(y0, t).ys
        if t is not None:
            return ys
        if isinstance(ys, (tuple, list)):
            return type(ys)(y[-1] for y in ys)
        return ys[-1]

    def extra_repr(self) -> str:
        return (
            f"t={self.t}, method={self.method!r}, gradient={self.gradient!r}, "
            f"rtol={self.rtol:g}, atol={self.atol:g}, options={self.options}"
        )
