"""``odeint_dense``: one solve, then the solution at any time of its interval."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._loop import integrate
from ._odeint import Setup, State, setup
from .gradients.base import GradientMethod
from .solvers import SOLVERS


def odeint_dense(
    func: Callable,
    y0: State,
    t0: torch.Tensor | float,
    t1: torch.Tensor | float,
    *,
    rtol: float | Sequence[float] = 1e-7,
    atol: float | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    gradient: str | GradientMethod = "direct",
    params: Sequence[torch.Tensor] | None = None,
) -> DenseOutput:
    """Solve from ``t0`` to ``t1`` and return the solution as a function of time.

    The same call as ``torchdiffeq.odeint_dense`` (which supports only ``dopri5``): here any
    adaptive method with dense output (``dopri5`` and the other entries of
    ``torchmali.SOLVERS`` with ``dense_output``), and fixed-grid solves (interpolated between
    grid points with ``options["interp"]``, ``"linear"`` or ``"cubic"``). Tuple and complex
    states are supported; ``t1 < t0`` integrates backwards.

    The returned function is differentiable with respect to ``y0`` and the parameters of
    ``func``. With ``gradient="direct"`` (default) it keeps every accepted step's graph (the
    memory of direct backpropagation) and each call only interpolates. With a memory-efficient
    ``gradient`` it keeps only the accepted grid, and each call replays the solve on that grid
    with the gradient method, outputs at the requested times: the same values, at that method's
    memory, for the cost of one solve per call.

    Raises:
        ValueError: the method has no way to interpolate inside its steps (the message lists
            the ones that do).
    """
    t = torch.stack([_time(t0), _time(t1)])
    if not t.is_floating_point():
        t = t.to(torch.float64)
    s = setup(func, y0, t, rtol, atol, method, options, gradient, params)
    if s.forward is not None:
        raise ValueError(
            f"method={s.stats.method!r} runs outside torchmali's loop and has no dense output "
            "here: use an adaptive method with dense output such as 'dopri5'"
        )
    if s.problem.interp_mode == "land":
        dense = sorted(n for n, c in SOLVERS.items() if c.adaptive and c.dense_output)
        name = s.stats.method
        raise ValueError(
            f"odeint_dense needs a solve that can interpolate inside its steps; method={name!r} "
            f"lands on output times instead. Use an adaptive method with dense output {dense}, "
            "or a non-reversible fixed-grid method"
        )
    return DenseOutput(s)


def _time(t: torch.Tensor | float) -> torch.Tensor:
    t = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
    if t.numel() != 1:
        raise ValueError(f"t0 and t1 must be single times, got shape {tuple(t.shape)}")
    return t.detach().reshape(())


class DenseOutput:
    """The solution of one solve as a function of time: ``dense(t)`` for a number, a 0-dim or a
    1-D tensor of times in ``[t0, t1]`` (stacked along a new leading dimension for 1-D).

    Attributes:
        ts: the accepted grid (float64, in the direction of ``t1 - t0``).
    """

    def __init__(self, s: Setup) -> None:
        self._s = s
        problem = s.problem
        self._direct = s.grad.name == "direct"
        self._steps: list[tuple[float, float, torch.Tensor, Any]] = []

        def keep(t0, h, y, state, result) -> bool:
            self._steps.append((t0, h, y, result))
            return False

        with torch.set_grad_enabled(torch.is_grad_enabled() and self._direct):
            _, _, _, record = integrate(
                problem, s.y0_flat, problem.init(s.y0_flat), until=keep if self._direct else None
            )
        s.stats.nfe_forward = problem.f.nfe
        s.stats.n_accepted, s.stats.n_rejected = record.n_steps, record.n_rejected
        self._grid = record.ts
        self.ts = torch.tensor(record.ts, dtype=torch.float64) * problem.f.sign

    def __call__(self, t: torch.Tensor | float) -> State:
        s = self._s
        sign, grid = s.problem.f.sign, self._grid
        tt = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
        if tt.dim() > 1:
            raise ValueError(
                f"times must be a number or a 0-dim or 1-D tensor, got {tuple(tt.shape)}"
            )
        values = [sign * float(v) for v in tt.detach().reshape(-1).to(torch.float64)]
        for v in values:
            if not grid[0] <= v <= grid[-1]:
                raise ValueError(
                    f"time {sign * v:.6g} is outside the solved interval "
                    f"[{sign * grid[0]:.6g}, {sign * grid[-1]:.6g}]"
                )
        flat = self._direct_at(values) if self._direct else self._replay_at(values)
        out = torch.stack(flat).to(s.structure.real_dtype)
        if tt.dim() == 0:
            out = out[0]
        return s.structure.unflatten(out)

    def _direct_at(self, values: list[float]) -> list[torch.Tensor]:
        problem, grid, out = self._s.problem, self._grid, []
        for v in values:
            if v == grid[0]:
                out.append(self._s.y0_flat)
                continue
            t0, h, y, result = self._steps[bisect.bisect_left(grid, v) - 1]
            out.append(result.y1 if v == t0 + h else problem.interpolate(t0, h, y, result, v))
        return out

    def _replay_at(self, values: list[float]) -> list[torch.Tensor]:
        s, grid = self._s, self._grid
        times = sorted({v for v in values if v > grid[0]})
        replay = s.problem.replay(
            grid[: bisect.bisect_left(grid, times[-1]) + 1] if times else [grid[0]],
            t_out=[grid[0], *times],
        )
        sign = s.problem.f.sign
        t_user = torch.tensor([sign * v for v in replay.t_out], dtype=torch.float64)
        ys, _ = s.run_flat(replay, t_user)
        index = {v: k for k, v in enumerate(replay.t_out)}
        return [ys[index[v]] for v in values]
