"""The one integration loop: step, accept or reject, save outputs.

Every gradient method drives this loop; they differ only in whether the graph is kept and in
what ``on_step`` stores for the backward pass. The accepted grid is returned in a
:class:`StepRecord` so that backward passes replay exactly the same steps (the same float ``h``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._errors import SolverError
from ._options import Options
from ._tree import RHS
from .solvers.base import Solver, StepResult
from .step_size import Controller, Tolerance, fixed_grid, initial_step


@dataclass
class Problem:
    """Everything a solve needs besides the initial state (times already increasing)."""

    f: RHS
    solver: Solver
    options: Options
    tol: Tolerance
    t_out: list[float]

    @property
    def fixed(self) -> bool:
        return self.options.step_size is not None

    def user_time(self, s: float) -> float:
        return self.f.sign * s

    def init(self, y0: torch.Tensor) -> Any:
        """The solver's auxiliary state at ``t_out[0]``."""
        return self.solver.init(self.f, self.t_out[0], y0)

    def step(self, t0: float, h: float, y: torch.Tensor, state: Any) -> StepResult:
        """One solver step; every gradient method steps (and re-steps) through here."""
        return self.solver.step(self.f, t0, h, y, state, with_error=not self.fixed)

    def fixed_grid(self) -> list[float]:
        """The fixed grid in the normalised (increasing) time: every output time, every
        ``step_t`` time and the regular points ``t0 + i h``.

        Raises:
            SolverError: the grid has more than ``options.max_num_steps`` steps.
        """
        grid = fixed_grid(self.t_out, self.options.step_size, self.step_t)
        if len(grid) - 1 > self.options.max_num_steps:
            raise SolverError(
                f"the fixed grid needs {len(grid) - 1} steps, more than max_num_steps="
                f"{self.options.max_num_steps}: raise options['max_num_steps'] or the step size",
                self.user_time(self.t_out[0]),
                0,
            )
        return grid

    @property
    def step_t(self) -> list[float]:
        """``options.step_t`` in the normalised (increasing) time."""
        return [self.f.sign * s for s in self.options.step_t]


@dataclass
class StepRecord:
    """The accepted grid ``ts[0] < ... < ts[N]`` and where each output falls.

    ``out_steps[k]`` is the index ``i`` of the step ``(ts[i], ts[i+1]]`` holding output ``k``
    (``-1`` for outputs at ``ts[0]``).
    """

    ts: list[float] = field(default_factory=list)
    out_steps: list[int] = field(default_factory=list)
    n_rejected: int = 0

    @property
    def n_steps(self) -> int:
        return len(self.ts) - 1

    def h(self, i: int) -> float:
        return self.ts[i + 1] - self.ts[i]

    def outputs_in_step(self, i: int) -> list[int]:
        return [k for k, j in enumerate(self.out_steps) if j == i]


OnStep = Callable[[int, torch.Tensor, Any], None]


def step_outputs(
    problem: Problem, record: StepRecord, i: int, y0: torch.Tensor, result: StepResult
) -> list[tuple[int, torch.Tensor]]:
    """The outputs ``(k, y(t_k))`` falling in accepted step ``i`` (end point or interpolated)."""
    t0, t1 = record.ts[i], record.ts[i + 1]
    out = []
    for k in record.outputs_in_step(i):
        tk = problem.t_out[k]
        if tk == t1:
            out.append((k, result.y1))
        else:
            out.append((k, problem.solver.interpolate(t0, t1 - t0, y0, result, tk)))
    return out


def integrate(
    problem: Problem, y0: torch.Tensor, state0: Any, on_step: OnStep | None = None
) -> tuple[list[torch.Tensor], torch.Tensor, Any, StepRecord]:
    """Integrate from ``t_out[0]`` to ``t_out[-1]``.

    ``on_step(i, y_i, state_i)`` is called before accepted step ``i`` is committed, with the state
    at its start. Returns the outputs, the final ``(y, state)`` and the step record.
    """
    if problem.fixed:
        return _fixed(problem, y0, state0, on_step)
    return _adaptive(problem, y0, state0, on_step)


def _fixed(problem, y, state, on_step):
    t_out = problem.t_out
    grid = problem.fixed_grid()
    record = StepRecord(ts=[grid[0]])
    outputs = [y]
    record.out_steps.append(-1)
    k = 1
    while k < len(t_out) and t_out[k] == grid[0]:
        outputs.append(y)
        record.out_steps.append(-1)
        k += 1
    for i in range(len(grid) - 1):
        t0, t1 = grid[i], grid[i + 1]
        if on_step is not None:
            on_step(i, y, state)
        result = problem.step(t0, t1 - t0, y, state)
        # One reduction is ~10x cheaper than isfinite().all(); NaN/Inf anywhere makes it non-finite.
        if not math.isfinite(float(result.y1.detach().sum())) and not bool(
            torch.isfinite(result.y1).all()
        ):
            raise SolverError(
                f"non-finite values (NaN/Inf) appeared in the state between t={problem.user_time(t0):.6g} "
                f"and t={problem.user_time(t1):.6g} (step {i + 1} of {len(grid) - 1}): reduce the "
                "step size, or check func for overflow",
                problem.user_time(t0),
                i + 1,
            )
        record.ts.append(t1)
        while k < len(t_out) and t_out[k] == t1:
            outputs.append(result.y1)
            record.out_steps.append(i)
            k += 1
        y, state = result.y1, result.state1
    return outputs, y, state, record


def _adaptive(problem, y, state, on_step):
    solver, o, tol, f, t_out = (
        problem.solver,
        problem.options,
        problem.tol,
        problem.f,
        problem.t_out,
    )
    t, t_end = t_out[0], t_out[-1]
    record = StepRecord(ts=[t], out_steps=[-1])
    outputs = [y]
    k = 1
    while k < len(t_out) and t_out[k] == t:
        outputs.append(y)
        record.out_steps.append(-1)
        k += 1
    if k == len(t_out):
        return outputs, y, state, record
    landings = {t_end, *(s for s in problem.step_t if t < s < t_end)}
    if not solver.dense_output:
        landings.update(t_out[k:])
    stops = sorted(landings)
    if o.first_step is not None:
        h = o.first_step
    else:
        f0 = solver.derivative(state)
        if f0 is None:
            with torch.no_grad():
                f0 = f(t, y)
        h = initial_step(f, t, y, f0, solver.order, tol, t_end - t)
    controller = Controller(o, solver.error_order)
    n_attempts = 0
    n_nonfinite = 0
    last_nonfinite = -1  # the attempt that last produced NaN/Inf (-1: none yet)
    j = 0  # next landing point
    while k < len(t_out):
        target = stops[j]
        h = min(h, o.max_step)
        land = t + h >= target
        t1 = target if land else t + h
        h_used = t1 - t
        # Below 10 ulps of t a step no longer advances the solution meaningfully (as in scipy).
        if t1 <= t or (not land and h_used < max(o.min_step, 10 * math.ulp(t))):
            if last_nonfinite >= 0 and n_attempts - last_nonfinite <= 10:
                raise SolverError(
                    f"non-finite values (NaN/Inf) appeared in the state just after "
                    f"t={problem.user_time(t):.6g}; the step size underflowed (h={h_used:.3g}) "
                    "trying to avoid them within the last 10 steps: check func for overflow or invalid operations there",
                    problem.user_time(t),
                    n_attempts,
                )
            raise SolverError(
                f"step size underflow: h={h_used:.3g} at t={problem.user_time(t):.6g} (target "
                f"{problem.user_time(t_end):.6g}) is below min_step={o.min_step:.3g} or float64 "
                f"resolution after {n_attempts} steps; the problem may be stiff, func may be "
                "discontinuous, or the solution may blow up: loosen rtol/atol, use a fixed "
                "step_size, or lower options['min_step']",
                problem.user_time(t),
                n_attempts,
            )
        n_attempts += 1
        if n_attempts > o.max_num_steps:
            raise SolverError(
                f"reached max_num_steps={o.max_num_steps} at t={problem.user_time(t):.6g} of "
                f"[{problem.user_time(t_out[0]):.6g}, {problem.user_time(t_end):.6g}] "
                f"({record.n_steps} accepted, {record.n_rejected} rejected): the problem may be "
                "stiff; loosen rtol/atol or raise options['max_num_steps']",
                problem.user_time(t),
                n_attempts,
            )
        result = problem.step(t, h_used, y, state)
        with torch.no_grad():
            err = tol.error_ratio(result.error, y, result.y1)
        if not math.isfinite(err):
            n_nonfinite += 1
            last_nonfinite = n_attempts
            record.n_rejected += 1
            if n_nonfinite > 30:
                raise SolverError(
                    f"non-finite values (NaN/Inf) appeared in the state at t={problem.user_time(t):.6g} "
                    f"and persist when the step is shrunk to h={h_used:.3g}: check func for "
                    "overflow or invalid operations at this point",
                    problem.user_time(t),
                    n_attempts,
                )
            h = h_used * controller.reject_nonfinite()
            continue
        n_nonfinite = 0
        accepted = err <= 1.0
        factor = controller.factor(err, accepted)
        if not accepted:
            record.n_rejected += 1
            h = h_used * factor
            continue
        i = record.n_steps
        if on_step is not None:
            on_step(i, y, state)
        record.ts.append(t1)
        while k < len(t_out) and t_out[k] <= t1:
            record.out_steps.append(i)
            k += 1
        outputs.extend(y_k for _, y_k in step_outputs(problem, record, i, y, result))
        t, y, state = t1, result.y1, result.state1
        if land:
            j += 1
        h = h_used * factor
    return outputs, y, state, record
