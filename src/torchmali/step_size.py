"""Step-size selection: fixed grids, the PID / integral controller, and the initial step."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._options import Options


def fixed_grid(
    t_out: Sequence[float], h: float, extra: Sequence[float] = (), *, land: bool = True
) -> list[float]:
    """The grid of a fixed step ``h`` from ``t_out[0]`` to ``t_out[-1]`` (increasing times).

    The regular points are torchdiffeq's: ``t0 + i h`` for ``i = 1, ..., ceil((t1 - t0)/h + 1) - 2``
    (the last point is ``t1`` itself, so with ``h = 0.3`` and ``t = [0, 1]`` the grid is
    ``0, 0.3, 0.6, 0.9, 1``). A regular point within round-off of ``t1`` is ``t1``.

    ``extra`` times (``step_t``) inside the interval are added to the grid; with ``land=True``
    every output time is too (for solvers that cannot interpolate inside a step), and a regular
    point closer than ``1e-3 h`` to an added time is dropped instead of making a sliver step
    (float32 output times such as 0.6 are ~2e-8 away from ``60 * 0.01``).

    The caller checks the number of steps, ``(t1 - t0) / h``, before calling: the list is built
    in full.
    """
    t0, t1 = t_out[0], t_out[-1]
    added = {t for t in extra if t0 < t < t1}
    if land:
        added.update(t_out)
    stops = sorted({t0, t1, *added})
    near = stops if land else sorted(added)
    n = math.ceil((t1 - t0) / h + 1) - 1
    fuzz = 8 * math.ulp(max(abs(t0), abs(t1)))
    regular = []
    for i in range(1, n):
        p = i * h + t0
        if p >= t1 - fuzz:
            break
        j = bisect.bisect_left(near, p)
        close = [near[k] for k in (j - 1, j) if 0 <= k < len(near)]
        if all(abs(p - s) > 1e-3 * h for s in close):
            regular.append(p)
    return sorted([*stops, *regular])


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square norm over all elements."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


@dataclass
class Tolerance:
    """Error scaling ``atol + rtol * max(|y0|, |y1|)`` and the norm of the scaled error."""

    rtol: float | torch.Tensor
    atol: float | torch.Tensor
    norm: Callable[[torch.Tensor], torch.Tensor | float] = rms_norm

    def scale(self, y0: torch.Tensor, y1: torch.Tensor | None = None) -> torch.Tensor:
        mag = y0.abs() if y1 is None else torch.maximum(y0.abs(), y1.abs())
        return mag * self.rtol + self.atol

    def error_ratio(self, error: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> float:
        """The norm of the scaled error; NaN whenever ``y1`` holds a NaN or Inf."""
        scaled = error / self.scale(y0, y1)
        # ``add(norm, y1.sum(), alpha=0)`` is the norm, or NaN when y1 holds a NaN or Inf
        # (0 * Inf = NaN): the finiteness check costs one reduction and no extra host sync.
        if self.norm is rms_norm:  # the hot path: one fewer kernel than calling rms_norm
            total = torch.add(torch.linalg.vector_norm(scaled), y1.sum(), alpha=0.0)
            return float(total) / math.sqrt(max(scaled.numel(), 1))
        ratio = torch.as_tensor(self.norm(scaled), device=y1.device)
        return float(torch.add(ratio, y1.sum(), alpha=0.0))


class Controller:
    """PID step-size controller (the integral controller for the default coefficients).

    The factor applied to the step after an error ratio ``e_n`` (``<= 1`` accepted) is::

        safety * e_n^(-β1/k) * e_{n-1}^(-β2/k) * e_{n-2}^(-β3/k),  clipped to [dfactor, ifactor]

    with ``β1 = p + i + d``, ``β2 = -(p + 2d)``, ``β3 = d`` and ``k`` the solver's
    ``error_order``. After a rejection the next accepted step may not grow.
    """

    def __init__(self, options: Options, error_order: int) -> None:
        self.o = options
        k = float(error_order)
        p, i, d = options.pcoeff, options.icoeff, options.dcoeff
        self.exponents = ((p + i + d) / k, -(p + 2 * d) / k, d / k)
        self.history = [1.0, 1.0]
        self.after_reject = False

    def factor(self, err: float, accepted: bool) -> float:
        o = self.o
        e1, e2, e3 = self.exponents
        prev1, prev2 = self.history
        if not accepted:
            # Rejected: shrink by the current error only (history is about accepted steps).
            f = o.safety * err ** (-(e1 + e2 + e3))
            self.after_reject = True
            return min(1.0, max(o.dfactor, f))
        if err == 0.0:
            f = o.ifactor
        else:
            f = o.safety * err ** (-e1) * prev1 ** (-e2) * prev2 ** (-e3)
            self.history = [err, prev1]
            f = min(o.ifactor, max(o.dfactor, f))
        if self.after_reject:
            f = min(f, 1.0)
            self.after_reject = False
        return f

    def reject_nonfinite(self) -> float:
        """A trial step produced NaN/Inf: shrink by ``dfactor``; the next step may not grow."""
        self.after_reject = True
        return self.o.dfactor


def initial_step(
    f: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    tol: Tolerance,
    t_span: float,
) -> float:
    """Hairer, Nørsett & Wanner's initial step (one extra evaluation beyond ``f0``)."""
    with torch.no_grad():
        scale = tol.scale(y0)
        d0 = float(tol.norm(y0 / scale))
        d1 = float(tol.norm(f0 / scale))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, t_span)
        y1 = torch.add(y0, f0, alpha=h0)
        f1 = f(t0 + h0, y1)
        d2 = float(tol.norm((f1 - f0) / scale)) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1, t_span)
