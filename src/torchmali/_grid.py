"""Which kind of grid a solve steps on, and the grid of ``options["grid_constructor"]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._errors import SolverError
from ._loop import Problem
from ._options import Options

#: options that only act on adaptive solves (refused on fixed grids, where they do nothing).
ADAPTIVE_ONLY = (
    "first_step",
    "min_step",
    "max_step",
    "safety",
    "ifactor",
    "dfactor",
    "pcoeff",
    "icoeff",
    "dcoeff",
    "norm",
    "jump_t",
    "dtype",
)
#: options that only act on fixed-grid solves.
FIXED_ONLY = ("grid_constructor", "interp")


def check_mode(method: str, solver, opts: Options) -> bool:
    """Check the options against the kind of solve; return whether it steps on a fixed grid."""
    fixed = not solver.adaptive or opts.step_size is not None or opts.grid_constructor is not None
    defaults = Options()
    if fixed:
        given = [k for k in ADAPTIVE_ONLY if getattr(opts, k) != getattr(defaults, k)]
        if given:
            raise ValueError(
                f"option(s) {given} only apply to adaptive solves and have no effect on the "
                f"fixed grid of method={method!r}: remove them"
                + (", or remove step_size/grid_constructor" if solver.adaptive else "")
            )
        if opts.interp is not None and solver.reversible:
            raise ValueError(
                f"options['interp'] has no effect with method={method!r}: a reversible solver's "
                "fixed grid lands on every output time (MALI cannot interpolate inside a step); "
                "remove it"
            )
    else:
        given = [k for k in FIXED_ONLY if getattr(opts, k) != getattr(defaults, k)]
        if given:
            raise ValueError(
                f"option(s) {given} only apply to fixed-grid solves, and method={method!r} is "
                "adaptive here: remove them, or pass options['step_size']"
            )
    return fixed


def constructed_grid(
    constructor: Callable, func: Callable, y0: Any, t: torch.Tensor, problem: Problem
) -> list[float]:
    """Call ``grid_constructor(func, y0, t)`` (user time) and check its grid."""
    grid = constructor(func, y0, t)
    if not isinstance(grid, torch.Tensor):
        try:
            grid = torch.as_tensor(grid, dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"grid_constructor must return a 1-D tensor of times, got {type(grid).__name__}"
            ) from e
    if grid.dim() != 1 or grid.numel() == 0:
        raise ValueError(
            f"grid_constructor must return a 1-D tensor of times, got shape {tuple(grid.shape)}"
        )
    limit = problem.options.max_num_steps
    if grid.numel() - 1 > limit:
        raise SolverError(
            f"the grid from grid_constructor has {grid.numel() - 1} steps, more than "
            f"max_num_steps={limit}: raise options['max_num_steps']",
            float(t[0]),
            0,
        )
    sign = problem.f.sign
    values = [sign * float(v) for v in grid.detach().to(torch.float64).cpu()]
    t0, t1 = problem.t_out[0], problem.t_out[-1]
    if values[0] != t0 or values[-1] != t1:
        raise ValueError(
            f"grid_constructor's grid must start at t[0] and end at t[-1] (got "
            f"{sign * values[0]:.6g} ... {sign * values[-1]:.6g} for t from {sign * t0:.6g} to "
            f"{sign * t1:.6g})"
        )
    if not all(b > a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError("grid_constructor's grid must be strictly monotone in the direction of t")
    return values
