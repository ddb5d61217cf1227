"""Shared fixtures: a float64 dtype fixture and analytic / reference problems.

Tests take the dtype from the ``f64`` fixture instead of changing torch's global default dtype,
so they can run in any order and in parallel with other test modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import torchmali

# pytest-xdist runs one worker per core: a second intra-op thread per worker only contends (on a
# loaded 2-core machine, OpenMP spin-waiting made small solves 70x slower).
torch.set_num_threads(1)

# One name per solver class (aliases such as "heun2" = "heun" are tested once), stepping solvers
# only: "scipy_solver" runs outside torch (no steps of its own, no gradient) and has its own tests.
_STEPPING = {n: c for n, c in torchmali.SOLVERS.items() if n == c.name and not c.forward_only}
ADAPTIVE = sorted(name for name, cls in _STEPPING.items() if cls.adaptive)
FIXED_ONLY = sorted(name for name, cls in _STEPPING.items() if not cls.adaptive)
ALL_SOLVERS = sorted(_STEPPING)
FORWARD_ONLY = sorted(n for n, c in torchmali.SOLVERS.items() if c.forward_only)


@pytest.fixture
def f64() -> torch.dtype:
    """The dtype of the accuracy tests (never set as torch's global default)."""
    return torch.float64


@dataclass
class Linear:
    """``y' = A y`` with ``y(t) = expm(A (t - t0)) y0``: a damped rotation plus a decaying mode."""

    A: torch.Tensor
    y0: torch.Tensor

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ self.A.T

    def exact(self, t, t0: float = 0.0) -> torch.Tensor:
        """``y(t)`` for a float or a 1-D tensor of times (stacked on a leading dimension)."""
        ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        A64, y64 = self.A.to(torch.float64), self.y0.to(torch.float64)
        out = torch.stack([torch.linalg.matrix_exp(A64 * (float(s) - t0)) @ y64 for s in ts])
        out = out.to(self.y0.dtype)
        return out if torch.as_tensor(t).dim() else out[0]


def make_linear(dtype: torch.dtype) -> Linear:
    A = torch.tensor([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.0], [0.0, 0.0, -0.5]], dtype=dtype)
    y0 = torch.tensor([1.0, 0.5, -1.0], dtype=dtype)
    return Linear(A, y0)


@pytest.fixture
def linear(f64) -> Linear:
    return make_linear(f64)


def lotka_volterra(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], dim=-1)


def lotka_volterra_reference(y0: list[float], ts: list[float]) -> torch.Tensor:
    """Reference solution by scipy's DOP853 at rtol = atol = 1e-12 (float64)."""
    solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp

    def rhs(t, y):
        return [1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]]

    sol = solve_ivp(rhs, (ts[0], ts[-1]), y0, method="DOP853", rtol=1e-12, atol=1e-12, t_eval=ts)
    assert sol.success
    return torch.tensor(sol.y.T, dtype=torch.float64)


def fitted_order(hs: list[float], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(h)."""
    xs = [math.log(h) for h in hs]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


class TanhField(torch.nn.Module):
    """A small nonlinear vector field ``tanh(W y + b) * c`` with time dependence (float64)."""

    def __init__(self, dim: int, dtype: torch.dtype, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=dtype) / dim**0.5)
        self.b = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=dtype) * 0.1)
        self.c = torch.nn.Parameter(torch.rand(dim, generator=g, dtype=dtype) + 0.5)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.W.T + self.b + 0.1 * t) * self.c
