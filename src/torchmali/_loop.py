"""The one integration loop: step, accept or reject, save outputs.

Every gradient method drives this loop; they differ only in whether the graph is kept and in
what ``on_step`` stores for the backward pass. The accepted grid is returned in a
:class:`StepRecord` so that backward passes replay exactly the same steps (the same float ``h``).

How outputs between grid points are computed (:attr:`Problem.interp_mode`):

* ``"dense"``: an adaptive solver with dense output interpolates inside its steps;
* ``"linear"`` / ``"cubic"``: a fixed-grid solve interpolates between grid points as torchdiffeq
  does (``options["interp"]``);
* ``"land"``: the grid lands on every output time. Adaptive solvers without dense output, and
  reversible solvers (ALF) on fixed grids: MALI walks the steps backwards through the solver's
  exact inverse and has nothing to interpolate with, so every gradient method lands, and all
  of them differentiate the same discrete solve.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ._callbacks import Callbacks
from ._errors import SolverError
from ._interp import cubic_hermite, linear
from ._options import Options
from ._tree import RHS
from .solvers.base import Solver, StepResult
from .solvers.tableau import RungeKutta
from .step_size import Controller, Tolerance, fixed_grid, initial_step


@dataclass
class Problem:
    """Everything a solve needs besides the initial state (times already increasing).

    Attributes:
        grid: an explicit fixed grid (from ``options["grid_constructor"]``, or the replay of an
            earlier solve's accepted steps); ``None`` to derive it from the options.
        interp: force the :attr:`interp_mode` (replays keep the mode of the solve they replay).
        callbacks: the user's step callbacks (see :mod:`torchmali._callbacks`), or ``None``.
        replays_adaptive: ``grid`` is the accepted grid of an adaptive solve (events, dense
            output): its steps are taken as the adaptive solve took them (:attr:`adaptive_steps`),
            so the replay reproduces its values bit for bit.
    """

    f: RHS
    solver: Solver
    options: Options
    tol: Tolerance
    t_out: list[float]
    grid: list[float] | None = None
    interp: str | None = None
    callbacks: Callbacks | None = None
    replays_adaptive: bool = False

    @property
    def fixed(self) -> bool:
        """Whether the solve steps on a fixed grid (no error control)."""
        o = self.options
        return (
            self.grid is not None
            or o.step_size is not None
            or o.grid_constructor is not None
            or not self.solver.adaptive
        )

    @property
    def adaptive_steps(self) -> bool:
        """Whether steps are taken as an adaptive solve takes them: with the error estimate and
        its ``perturb=`` hints (stages at a step's end evaluated just before it)."""
        return not self.fixed or self.replays_adaptive

    @property
    def interp_mode(self) -> str:
        """``"dense"``, ``"linear"``, ``"cubic"`` or ``"land"`` (see the module docstring)."""
        if self.interp is not None:
            return self.interp
        if self.fixed:
            return "land" if self.solver.reversible else (self.options.interp or "linear")
        return "dense" if self.solver.dense_output else "land"

    def replay(
        self,
        grid: list[float],
        t_out: list[float] | None = None,
        interp: str | None = None,
        callbacks: Callbacks | None = None,
    ) -> Problem:
        """This problem on ``grid``, the accepted grid of an earlier solve of it, stepped as that
        solve stepped (:attr:`adaptive_steps`) and its outputs interpolated as it did
        (``interp``, default :attr:`interp_mode`): the values are that solve's bit for bit.
        Callbacks are not called again unless given."""
        return dataclasses.replace(
            self,
            grid=grid,
            t_out=self.t_out if t_out is None else t_out,
            interp=self.interp_mode if interp is None else interp,
            callbacks=callbacks,
            replays_adaptive=self.adaptive_steps,
        )

    def user_time(self, s: float) -> float:
        return self.f.sign * s

    def init(self, y0: torch.Tensor) -> Any:
        """The solver's auxiliary state at ``t_out[0]``."""
        return self.solver.init(self.f, self.t_out[0], y0)

    def step(self, t0: float, h: float, y: torch.Tensor, state: Any) -> StepResult:
        """One solver step; every gradient method steps (and re-steps) through here.

        A step ending on a ``jump_t`` time restarts the solver there (:meth:`restart`), so
        every replay of the step differentiates the restart too.
        """
        result = self.solver.step(self.f, t0, h, y, state, with_error=self.adaptive_steps)
        jump = self.jump_at(t0, h)
        return result if jump is None else self.restart(jump, result)

    def restart(self, t1: float, result: StepResult) -> StepResult:
        """After a jump of ``func`` at ``t1``: the solver state from ``f(t1+, y1)``."""
        f = self.f

        def after(t: float, y: torch.Tensor) -> torch.Tensor:
            return f(t, y, perturb=1)

        return dataclasses.replace(result, state1=self.solver.init(after, t1, result.y1))

    def jump_at(self, t0: float, h: float) -> float | None:
        """The ``jump_t`` time a step ``(t0, h)`` ends on, if any.

        Steps that land on a jump end on it up to the rounding of ``t0 + (t1 - t0)``; the loop
        never ends another step that close to one.
        """
        jumps = self.jump_t
        if not jumps:
            return None
        t1 = t0 + h
        j = bisect.bisect_left(jumps, t1)
        for k in (j - 1, j):
            if 0 <= k < len(jumps) and abs(jumps[k] - t1) <= _fuzz(t0, t1):
                return jumps[k]
        return None

    def interpolate(
        self, t0: float, h: float, y0: torch.Tensor, result: StepResult, t: float
    ) -> torch.Tensor:
        """The output at ``t`` inside the step ``(t0, t0 + h]`` (see :attr:`interp_mode`)."""
        mode = self.interp_mode
        if mode == "dense":
            return self.solver.interpolate(t0, h, y0, result, t)
        if mode == "linear":
            return linear(t0, h, y0, result.y1, t)
        if mode == "cubic":  # f1 costs one more evaluation, as in torchdiffeq
            f0 = self._start_derivative(t0, y0, result)
            return cubic_hermite(t0, h, y0, f0, result.y1, self.f(t0 + h, result.y1), t)
        raise RuntimeError(f"internal error: output time {t} inside a step of a landing grid")

    def _start_derivative(self, t0: float, y0: torch.Tensor, result: StepResult) -> torch.Tensor:
        if isinstance(self.solver, RungeKutta) and result.dense:
            return result.dense[0]  # the first stage is f(t0, y0)
        # torchdiffeq's f0 of a fixed-grid step: perturbed only with options["perturb"]
        return self.f(t0, y0, perturb=1 if getattr(self.solver, "perturb", False) else 0)

    @property
    def step_t(self) -> list[float]:
        """``options.step_t`` in the normalised (increasing) time."""
        return [self.f.sign * s for s in self.options.step_t]

    @cached_property
    def jump_t(self) -> list[float]:
        """``options.jump_t`` in the normalised time, sorted."""
        return sorted(self.f.sign * s for s in self.options.jump_t)

    @cached_property
    def round_time(self) -> Callable[[float], float] | None:
        """Rounding of step times to ``options.dtype`` (``None``: float64, no rounding)."""
        dtype = torch.promote_types(self.options.dtype, self.f.structure.real_dtype)
        if dtype == torch.float64:
            return None
        return lambda x: float(torch.tensor(x, dtype=torch.float64).to(dtype))

    def fixed_grid(self) -> list[float]:
        """The fixed grid, increasing: ``t`` itself, ``options.step_size``'s grid, or
        :attr:`grid`; with every ``step_t`` time (and every output time when the solve lands).

        Raises:
            SolverError: the grid has more than ``options.max_num_steps`` steps; checked before
                the grid is built, so a tiny step size fails at once.
        """
        t_out, o = self.t_out, self.options
        land = self.interp_mode == "land"
        t0, t1 = t_out[0], t_out[-1]
        inner = [s for s in self.step_t if t0 < s < t1]
        if o.step_size is not None and self.grid is None:
            self._check_steps((t1 - t0) / o.step_size)
            grid = fixed_grid(t_out, o.step_size, inner, land=land)
        else:
            base = t_out if self.grid is None else self.grid
            extra = [*inner, *(t_out if land else ())] if self.grid is not None else inner
            self._check_steps(len(base) + len(extra) - 1)
            grid = sorted({*base, *extra}) if extra else list(base)
        self._check_steps(len(grid) - 1)
        return grid

    def _check_steps(self, n: float) -> None:
        limit = self.options.max_num_steps
        if not n <= limit:
            raise SolverError(
                f"the fixed grid needs {n:.6g} steps, more than max_num_steps={limit}: raise "
                "options['max_num_steps'] or the step size",
                self.user_time(self.t_out[0]),
                0,
            )


def _fuzz(t0: float, t1: float) -> float:
    """Rounding error of ``t0 + (t1 - t0)`` (a few ulps of the larger time)."""
    return 4 * math.ulp(max(abs(t0), abs(t1)))


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
#: ``until(t0, h, y0, state0, result) -> stop?``, after each accepted step (events).
Until = Callable[[float, float, torch.Tensor, Any, StepResult], bool]


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
            out.append((k, problem.interpolate(t0, t1 - t0, y0, result, tk)))
    return out


def integrate(
    problem: Problem,
    y0: torch.Tensor,
    state0: Any,
    on_step: OnStep | None = None,
    until: Until | None = None,
    grid: Iterable[float] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, Any, StepRecord]:
    """Integrate from ``t_out[0]`` to ``t_out[-1]``.

    ``on_step(i, y_i, state_i)`` is called before accepted step ``i`` is committed, with the state
    at its start. ``until``, if given, is asked after every accepted step whether to stop there
    (event detection; ``t_out[-1]`` may then be ``inf``). ``grid`` overrides the fixed grid (an
    iterable, possibly unbounded). Returns the outputs, the final ``(y, state)`` and the record.
    """
    if problem.fixed:
        return _fixed(problem, y0, state0, on_step, until, grid)
    return _adaptive(problem, y0, state0, on_step, until)


def _initial_outputs(t_out, t0, y, record, outputs) -> int:
    k = 1
    while k < len(t_out) and t_out[k] == t0:
        outputs.append(y)
        record.out_steps.append(-1)
        k += 1
    return k


def _fixed(problem, y, state, on_step, until, grid):
    t_out, cb = problem.t_out, problem.callbacks
    if grid is None:
        grid = problem.fixed_grid()
    n_total = len(grid) - 1 if isinstance(grid, list) else None
    points = iter(grid)
    t0 = next(points)
    record = StepRecord(ts=[t0], out_steps=[-1])
    outputs = [y]
    k = _initial_outputs(t_out, t0, y, record, outputs)
    for i, t1 in enumerate(points):
        h = t1 - t0
        if cb is not None:
            cb.on_step(t0, y, h)
        if on_step is not None:
            on_step(i, y, state)
        result = problem.step(t0, h, y, state)
        # One reduction is ~10x cheaper than isfinite().all(); NaN/Inf anywhere makes it non-finite.
        if not math.isfinite(float(result.y1.detach().sum())) and not bool(
            torch.isfinite(result.y1).all()
        ):
            of = f" of {n_total}" if n_total is not None else ""
            raise SolverError(
                f"non-finite values (NaN/Inf) appeared in the state between t={problem.user_time(t0):.6g} "
                f"and t={problem.user_time(t1):.6g} (step {i + 1}{of}): reduce the "
                "step size, or check func for overflow",
                problem.user_time(t0),
                i + 1,
            )
        record.ts.append(t1)
        while k < len(t_out) and t_out[k] <= t1:
            record.out_steps.append(i)
            k += 1
        outputs.extend(y_k for _, y_k in step_outputs(problem, record, i, y, result))
        if until is not None and until(t0, h, y, state, result):
            return outputs, result.y1, result.state1, record
        y, state, t0 = result.y1, result.state1, t1
    return outputs, y, state, record


def _adaptive(problem, y, state, on_step, until):
    solver, o, tol, f, t_out = (
        problem.solver,
        problem.options,
        problem.tol,
        problem.f,
        problem.t_out,
    )
    cb, rnd = problem.callbacks, problem.round_time
    t, t_end = t_out[0], t_out[-1]
    record = StepRecord(ts=[t], out_steps=[-1])
    outputs = [y]
    k = _initial_outputs(t_out, t, y, record, outputs)
    if k == len(t_out):
        return outputs, y, state, record
    jumps = set(problem.jump_t)
    landings = {t_end, *(s for s in [*problem.step_t, *jumps] if t < s < t_end)}
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
        if cb is not None:
            cb.on_step(t, y, h)
        t1 = t + h if rnd is None else rnd(t + h)
        # A step ending within rounding of the next landing point lands on it instead.
        land = math.isfinite(target) and t1 >= target - _fuzz(t, target)
        if land:
            t1 = target
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
        result = solver.step(f, t, h_used, y, state)
        with torch.no_grad():
            err = tol.error_ratio(result.error, y, result.y1)
        if not math.isfinite(err):
            n_nonfinite += 1
            last_nonfinite = n_attempts
            record.n_rejected += 1
            if cb is not None:
                cb.on_reject(t, y, h_used)
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
            if cb is not None:
                cb.on_reject(t, y, h_used)
            h = h_used * factor
            continue
        if cb is not None:
            cb.on_accept(t, y, h_used)
        if land and target in jumps:
            result = problem.restart(target, result)
        i = record.n_steps
        if on_step is not None:
            on_step(i, y, state)
        record.ts.append(t1)
        while k < len(t_out) and t_out[k] <= t1:
            record.out_steps.append(i)
            k += 1
        outputs.extend(y_k for _, y_k in step_outputs(problem, record, i, y, result))
        if until is not None and until(t, h_used, y, state, result):
            return outputs, result.y1, result.state1, record
        t, y, state = t1, result.y1, result.state1
        if land:
            j += 1
        h = h_used * factor
    return outputs, y, state, record
