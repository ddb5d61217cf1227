"""bfloat16 / float16 states: integrated in float32, func evaluated in the user's dtype.

Before, the solver's state and error control were in the user's dtype: ``z' = -z`` with small
steps never moved (a bfloat16 update ``h z`` below half an ulp of ``z`` rounds away), and
float16 divided by an ``atol`` that rounds to 0. Tolerances that no answer in the dtype can meet
are refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchmali
from torchmali._precision import unit_roundoff
from torchmali.gradients import REGISTRY, resolve

LOW = [torch.bfloat16, torch.float16]
# the stepping solvers (scipy_solver hands the whole solve to scipy: see its own test below)
ADAPTIVE = sorted(n for n, c in torchmali.SOLVERS.items() if c.adaptive and not c.forward_only)
ALL = sorted(n for n, c in torchmali.SOLVERS.items() if not c.forward_only)
T = torch.tensor([0.0, 1.0])


def _decay(t, y):
    return -y


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("method", ALL)
def test_small_fixed_steps_are_not_rounded_away(method, dtype):
    """500 steps of 0.002: every update is below half an ulp of a bfloat16 state. The answer is
    the float64 answer of the same discrete solve, rounded to the dtype."""
    opts = {"step_size": 0.002}
    ys = torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, method=method, options=opts)
    ref = torchmali.odeint(_decay, torch.ones(1, dtype=torch.float64), T.double(), method=method,
                           options=opts)  # fmt: skip
    assert ys.dtype == dtype
    assert _rel(ys[-1], ref[-1]) <= unit_roundoff(dtype)
    assert abs(float(ref[-1]) - math.exp(-1)) < 1e-3  # the discrete solve is accurate


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_many_steps_match_float64(method, dtype):
    """Adaptive steps capped at 0.005 (200 steps) on a rotation: as accurate as func in the dtype
    allows (a few units of roundoff), where the low-precision state drifted or stalled."""
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])

    def rot(t, y):
        return y @ A.T.to(y.dtype)

    y0 = torch.tensor([1.0, 0.5])
    opts = {"max_step": 0.005}
    ys = torchmali.odeint(rot, y0.to(dtype), T, rtol=1e-2, atol=1e-3, method=method, options=opts)
    ref = torchmali.odeint(rot, y0.double(), T.double(), rtol=1e-2, atol=1e-3, method=method,
                           options=opts)  # fmt: skip
    assert ys.dtype == dtype
    assert _rel(ys[-1], ref[-1]) < 8 * unit_roundoff(dtype)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_tightest_allowed_tolerance(method, dtype):
    """At the smallest rtol the dtype accepts, the answer is within a few units of roundoff of
    the same solve in float64, in a handful of steps (float16 with atol=1e-9 used to report
    NaN). (Against exp(-1) itself the method's own global error counts too: fehlberg2, whose
    error estimate is first order, is 5.5% off at this rtol in float64 as well.)"""
    rtol = 2 * unit_roundoff(dtype)
    sol = torchmali.solve(_decay, torch.ones(1, dtype=dtype), T, rtol=rtol, atol=1e-9,
                          method=method)  # fmt: skip
    ref = torchmali.odeint(_decay, torch.ones(1, dtype=torch.float64), T.double(), rtol=rtol,
                           atol=1e-9, method=method)  # fmt: skip
    assert abs(float(sol.ys[-1]) - float(ref[-1])) / float(ref[-1]) < 4 * rtol
    assert sol.stats.n_accepted + sol.stats.n_rejected < 100


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_tuple_state_keeps_dtype(dtype):
    y0 = (torch.ones(2, dtype=dtype), torch.zeros(1, dtype=dtype))
    ys = torchmali.odeint(lambda t, y: (-y[0], y[0][:1]), y0, T, rtol=1e-2, atol=1e-3)
    assert all(y.dtype == dtype for y in ys)
    assert float(ys[1][-1]) == pytest.approx(1 - math.exp(-1), rel=1e-2)


class _Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(3, 3, generator=g) * 0.5)
            self.lin.bias.copy_(torch.randn(3, generator=g) * 0.1)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


def _solver_for(gradient: str) -> str:
    method = resolve(gradient)
    for name in ["alf", *ALL]:
        try:
            method.check(torchmali.SOLVERS[name](), True)
        except ValueError:
            continue
        return name
    raise AssertionError(gradient)


@pytest.mark.parametrize("gradient", sorted({c.name for c in REGISTRY.values()}))
def test_gradients_flow_through_the_casts(gradient):
    """y0 and the parameters in bfloat16: gradients come back in bfloat16, equal to the float64
    ones up to bfloat16 resolution."""
    grads = {}
    for dtype in (torch.float64, torch.bfloat16):
        func = _Field().to(dtype)
        y0 = torch.linspace(-1, 1, 3, dtype=dtype).requires_grad_(True)
        ys = torchmali.odeint(func, y0, T.to(dtype), method=_solver_for(gradient),
                              options={"step_size": 0.1}, gradient=gradient)  # fmt: skip
        assert ys.dtype == dtype
        ys[-1].square().sum().backward()
        grads[dtype] = [y0.grad, *(p.grad for p in func.parameters())]
    for g, r in zip(grads[torch.bfloat16], grads[torch.float64], strict=True):
        assert g.dtype == torch.bfloat16
        assert _rel(g, r) < 3e-2


# ---------------------------------------------------------------------------------------------
# Tolerances.


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_zero_tolerances_are_refused(method):
    opts = {"step_size": 0.1} if method == "rk4" else None
    with pytest.raises(ValueError, match="rtol and atol are both 0"):
        torchmali.odeint(_decay, torch.ones(1), T, rtol=0, atol=0, method=method, options=opts)
    y0 = (torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="rtol and atol are both 0"):
        torchmali.odeint(lambda t, y: y, y0, T, rtol=[0.0, 1e-3], atol=[0.0, 0.0])


@pytest.mark.parametrize(
    ("dtype", "rtol", "floor"),
    [
        (torch.bfloat16, 1e-3, "0.004"),
        (torch.float16, 1e-4, "0.0005"),
    ],
    ids=str,
)
def test_tolerance_below_the_dtype_is_refused(dtype, rtol, floor):
    with pytest.raises(ValueError, match=rf"below the resolution of .*rtol >= {floor}") as info:
        torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, rtol=rtol)
    assert "y0.float()" in str(info.value)
    # the fixes: rtol at the floor, or pure absolute control; fixed grids ignore tolerances
    torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, rtol=float(floor))
    torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, rtol=0.0, atol=1e-3)
    torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, rtol=rtol, method="rk4",
                     options={"step_size": 0.25})  # fmt: skip


def test_default_tolerances_with_bfloat16_name_the_fix():
    """torchdiffeq's defaults (rtol=1e-7) with a bfloat16 state returned 1.0 for exp(-1) with
    alf; now refused, naming the fix."""
    with pytest.raises(ValueError, match=r"rtol=1e-07 .* bfloat16 .*rtol >= 0\.004"):
        torchmali.odeint(_decay, torch.ones(1, dtype=torch.bfloat16), T, method="alf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tiny_rtol_with_a_dominant_atol_runs_in_full_precision(dtype):
    """torchdiffeq accepts rtol below float32/float64 resolution; with an atol that dominates the
    error control the solve is well posed, so it runs (no refusal) and is accurate to atol."""
    u = unit_roundoff(dtype)
    ys = torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, rtol=u / 10, atol=1e-6)
    assert abs(float(ys[-1]) - math.exp(-1)) < 1e-5


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_scipy_solver_returns_the_users_dtype(dtype):
    """scipy integrates in float64; the answer comes back in the state's dtype."""
    ys = torchmali.odeint(_decay, torch.ones(1, dtype=dtype), T, rtol=1e-2, atol=1e-3,
                          method="scipy_solver")  # fmt: skip
    assert ys.dtype == dtype
    assert abs(float(ys[-1]) - math.exp(-1)) < 4 * unit_roundoff(dtype) + 1e-2
