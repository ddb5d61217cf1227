"""Events: integrate until ``event_fn(t, y)`` changes sign, as torchdiffeq does.

Locating an event (:func:`locate`) runs the solve under ``no_grad`` until an accepted step ends
with the event function's sign changed, then bisects inside that step on the step's own
continuous extension: the solver's dense output (adaptive solvers that have one), torchdiffeq's
linear or cubic interpolation (fixed grids), or a shortened step from the step's start (solvers
that land on output times: ALF, adaptive solvers without dense output). Bisection stops when the
bracket is below ``atol`` (torchdiffeq's rule); the event time is the bracket's midpoint.

The caller then solves again with the chosen gradient method on exactly the located steps (a
replay), so the differentiable solution at the event equals the located one bit for bit, with
every gradient method. Gradients *through the event time* come from the implicit function
theorem (:class:`_Reroute`, used by :func:`torchmali.odeint_event`): with ``g(τ, y(τ)) = 0``,

    dτ = -(∂g/∂y · dy(τ)) / (∂g/∂t + ∂g/∂y · f(τ, y(τ)))

so the cotangent of ``τ`` (plus that of ``y(τ)`` moving along ``f`` with ``τ``) is sent back to
``y(τ)`` along ``∂g/∂y``, and from there through the solve.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._errors import SolverError
from ._loop import Problem, integrate
from ._solution import Solution
from ._tree import Structure

if TYPE_CHECKING:
    from ._odeint import Setup


def combine(event_fn: Callable, t0: torch.Tensor, y0: Any) -> Callable:
    """torchdiffeq's ``combine_event_functions``: flip every element of ``event_fn`` to start
    positive and take their minimum, so that the first element to change sign is the event."""
    with torch.no_grad():
        signs = torch.sign(event_fn(t0, y0))

    def combined(t: torch.Tensor, y: Any) -> torch.Tensor:
        return torch.min(event_fn(t, y) * signs)

    return combined


@dataclass
class Hit:
    """A located event: normalised time ``s``, state ``y`` (no graph), and the replay."""

    s: float
    y: torch.Tensor
    grid: list[float]
    mode: str
    n_rejected: int


def locate(problem: Problem, y0: torch.Tensor, event: Callable, t_dtype: torch.dtype) -> Hit:
    """Find where ``event(t, y)`` (user time, user structure) first changes sign after ``t0``."""
    f = problem.f
    structure, sign, s0 = f.structure, f.sign, problem.t_out[0]
    mode = problem.interp_mode

    def g(s: float, y: torch.Tensor) -> torch.Tensor:
        t = torch.tensor(sign * s, dtype=torch.float64).to(structure.device, t_dtype)
        return event(t, structure.unflatten(y))

    with torch.no_grad():
        sign0 = torch.sign(g(s0, y0))
        if sign0 == 0:
            return Hit(s0, y0, [s0], mode, 0)
        last: dict[str, Any] = {}

        def until(t0, h, y, state, result) -> bool:
            if torch.sign(g(t0 + h, result.y1)) == sign0:
                return False
            last.update(t0=t0, h=h, y=y, state=state, result=result)
            return True

        probe = dataclasses.replace(problem, t_out=[s0, math.inf])
        grid = _unbounded(problem) if problem.fixed else None
        _, _, _, record = integrate(probe, y0, problem.init(y0), until=until, grid=grid)
        t0, h, y, state, result = (last[k] for k in ("t0", "h", "y", "state", "result"))

        def value(s: float) -> torch.Tensor:
            if s == t0 + h:
                return result.y1
            if mode == "land":
                return problem.step(t0, s - t0, y, state).y1
            return problem.interpolate(t0, h, y, result, s)

        lo, hi = t0, t0 + h
        for _ in range(_bisections(hi - lo, problem.tol.atol)):
            mid = (lo + hi) / 2.0
            if torch.sign(g(mid, value(mid))) == sign0:
                lo = mid
            else:
                hi = mid
        s_event = (lo + hi) / 2.0
        y_event = value(s_event)
    ts = record.ts
    if mode == "land":
        grid = [*ts[:-1], s_event] if s_event > ts[-2] else ts[:-1]
    else:
        grid = ts[: bisect.bisect_left(ts, s_event) + 1]
    return Hit(s_event, y_event, grid, mode, record.n_rejected)


def _bisections(width: float, atol: Any) -> int:
    """torchdiffeq's count, ``ceil(log2(width / atol))`` (atol: the smallest one), at most 200."""
    tol = float(atol.min()) if isinstance(atol, torch.Tensor) else float(atol)
    if tol <= 0:
        return 200
    return min(200, max(0, math.ceil(math.log2(width / tol))))


def _unbounded(problem: Problem):
    """A fixed step's grid without an end (events): ``t0, t0 + h, ...``, as torchdiffeq steps."""
    t, h, limit = problem.t_out[0], problem.options.step_size, problem.options.max_num_steps
    yield t
    for _ in range(limit):
        t = t + h
        yield t
    raise SolverError(
        f"no event within max_num_steps={limit} steps of h={h:.3g} from "
        f"t={problem.user_time(problem.t_out[0]):.6g}: raise options['max_num_steps'], or check "
        "that event_fn changes sign",
        problem.user_time(t),
        limit,
    )


@dataclass(frozen=True)
class Spec:
    """What :class:`_Reroute` needs: the user's ``func``, the combined event function and the
    state's structure (all in the user's time and structure)."""

    func: Callable
    event: Callable
    structure: Structure


class _Reroute(torch.autograd.Function):
    """Identity on ``(event_t, y(event_t))``; the backward adds the event time's dependence on
    the state (implicit function theorem) to the state's cotangent."""

    @staticmethod
    def forward(ctx, spec: Spec, event_t: torch.Tensor, state: torch.Tensor):
        ctx.spec = spec
        ctx.save_for_backward(event_t, state)
        return event_t.detach().clone(), state.detach().clone()

    @staticmethod
    def backward(ctx, grad_t: torch.Tensor, grad_state: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "odeint_event does not support double backward (create_graph=True) through the "
                "event time"
            )
        spec: Spec = ctx.spec
        st = spec.structure
        event_t, state = ctx.saved_tensors
        with torch.enable_grad():
            t = event_t.detach().requires_grad_(True)
            y = state.detach().requires_grad_(True)
            c = spec.event(t, st.unflatten(y))
            dcdt, dcdy = torch.autograd.grad(c, (t, y), allow_unused=True)
        dcdt = torch.zeros_like(t) if dcdt is None else dcdt
        dcdy = torch.zeros_like(y) if dcdy is None else dcdy
        t_func = event_t.detach().to(st.real_dtype)
        f_val = st.flatten(spec.func(t_func, st.unflatten(state.detach())))
        total_dcdt = dcdt.to(f_val.dtype) + torch.sum(dcdy * f_val)
        if float(total_dcdt) == 0.0:
            raise RuntimeError(
                "the event function's total time derivative is zero at the event (it touches "
                "zero without crossing): the event time is not differentiable there"
            )
        total_grad_t = grad_t.to(f_val.dtype) + torch.sum(grad_state * f_val)
        return None, None, grad_state + dcdy * (-total_grad_t / total_dcdt)


def reroute(
    func: Callable, event: Callable, structure: Structure, event_t: torch.Tensor, state: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(event_t, flat state)`` with gradients through the event time (see :class:`_Reroute`)."""
    return _Reroute.apply(Spec(func, event, structure), event_t, structure.flatten(state))


def solve_event(s: Setup, event_fn: Callable) -> Solution:
    """Locate the event under ``no_grad``, then solve to it with the chosen gradient method,
    replaying exactly the steps that located it (same values, every gradient method)."""
    problem = s.problem
    if problem.fixed and problem.options.step_size is None:
        raise ValueError(
            "Event handling for fixed step solvers requires options['step_size'] (as in "
            "torchdiffeq): the grid cannot be known before the event"
        )
    t_dtype = s.t_tensor.dtype
    ev_dtype = t_dtype if problem.fixed else torch.float64
    combined = combine(event_fn, s.t_tensor[0].detach(), s.y0)
    hit = locate(problem, s.y0_flat, combined, ev_dtype)
    sign = problem.f.sign
    event_t = torch.tensor(sign * hit.s, dtype=torch.float64).to(s.t_tensor.device, t_dtype)
    t_run = torch.stack([s.t_tensor[0], event_t])
    replay = problem.replay(hit.grid, t_out=[problem.t_out[0], hit.s], interp=hit.mode)
    needs_grad = torch.is_grad_enabled() and (
        s.y0_flat.requires_grad
        or s.t_tensor.requires_grad
        or any(p.requires_grad for p in s.params)
    )
    s.stats.n_rejected = hit.n_rejected
    if needs_grad:
        sol = s.run(replay, t_run)
    else:  # nothing to differentiate: the located solve already has the answer
        ys = s.structure.unflatten(torch.stack([s.y0_flat, hit.y]).to(s.structure.real_dtype))
        s.stats.nfe_forward = problem.f.nfe
        s.stats.n_accepted = len(hit.grid) - 1
        sol = Solution(ys=ys, ts=torch.tensor(hit.grid, dtype=torch.float64) * sign, stats=s.stats)
    sol.event_t = event_t
    return sol
