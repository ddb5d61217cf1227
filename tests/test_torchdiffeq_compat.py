"""torchmali.odeint is a drop-in replacement: the same call gives torchdiffeq's answer.

Skipped when torchdiffeq is not installed.
"""

from __future__ import annotations

import pytest
import torch

import torchmali
from conftest import TanhField, lotka_volterra, lotka_volterra_reference

torchdiffeq = pytest.importorskip("torchdiffeq")


@pytest.fixture
def field(f64):
    return TanhField(3, f64, seed=7).requires_grad_(False)


@pytest.fixture
def y0(f64):
    return torch.tensor([[0.4, -0.6, 1.0], [-1.0, 0.2, 0.3]], dtype=f64)


def _both(func, y0, t, **kwargs):
    return torchmali.odeint(func, y0, t, **kwargs), torchdiffeq.odeint(func, y0, t, **kwargs)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_dopri5_tight_tolerance(direction, field, y0, f64):
    t = torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=f64) * direction
    ours, theirs = _both(field, y0, t, rtol=1e-10, atol=1e-10, method="dopri5")
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-8)


def test_default_method_and_tolerances(field, y0, f64):
    """No method and no tolerances: both default to dopri5 at rtol 1e-7, atol 1e-9."""
    t = torch.tensor([0.0, 1.0, 2.0], dtype=f64)
    ours, theirs = _both(field, y0, t)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_fixed_grid_same_steps(method, direction, field, y0, f64):
    """Same method, same grid (the step divides the interval): the same answer to round-off."""
    t = torch.tensor([0.0, 0.5, 1.0], dtype=f64) * direction
    ours, theirs = _both(field, y0, t, method=method, options={"step_size": 0.125})
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-13)


def test_rk4(field, y0, f64):
    """torchdiffeq's "rk4" is the 3/8-rule variant: both are 4th order, so they agree to O(h^4)."""
    t = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
    ours, theirs = _both(field, y0, t, method="rk4", options={"step_size": 0.05})
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-7)
    exact = torchdiffeq.odeint(field, y0, t, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ours, exact, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "tol"), [("bosh3", 1e-6), ("adaptive_heun", 1e-5), ("tsit5", 1e-7)]
)
def test_other_adaptive_methods(method, tol, f64):
    """Same method and tolerance: answers close, and torchmali's at least as accurate.

    (torchdiffeq 0.2.5's bosh3 misses its tolerance by ~100x on this problem; ours does not.)
    """
    from torchdiffeq._impl.odeint import SOLVERS as TDE_SOLVERS

    if method not in TDE_SOLVERS:
        pytest.skip(f"torchdiffeq has no {method}")
    ts = [0.0, 1.0, 2.0]
    ref = lotka_volterra_reference([1.0, 1.0], ts)
    y0 = torch.tensor([1.0, 1.0], dtype=f64)
    ours, theirs = _both(
        lotka_volterra, y0, torch.tensor(ts, dtype=f64), rtol=tol, atol=tol, method=method
    )
    assert torch.allclose(ours, theirs, rtol=0, atol=200 * tol)
    ours_err, theirs_err = float((ours - ref).abs().max()), float((theirs - ref).abs().max())
    assert ours_err <= 2 * theirs_err + tol
    assert float(((ours - ref).abs() / (1 + ref.abs())).max()) <= 20 * tol


def test_tuple_state(f64):
    def f(t, state):
        x, v = state
        return v, -x - 0.1 * v

    x0 = torch.tensor([1.0, 0.0], dtype=f64)
    v0 = torch.tensor([0.0, 1.0], dtype=f64)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=f64)
    ours, theirs = _both(f, (x0, v0), t, rtol=1e-10, atol=1e-10)
    assert isinstance(ours, tuple) and len(ours) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-8)
    fixed = _both(f, (x0, v0), t[[0, 2]], method="euler", options={"step_size": 0.1})
    for a, b in zip(*fixed, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_gradients_agree(f64):
    """Direct backprop through the same fixed-grid solve gives torchdiffeq's gradients."""
    grads = []
    for odeint in (torchmali.odeint, torchdiffeq.odeint):
        field = TanhField(3, f64, seed=8)
        y0 = torch.tensor([0.2, -0.1, 0.4], dtype=f64, requires_grad=True)
        ys = odeint(
            field,
            y0,
            torch.tensor([0.0, 1.0], dtype=f64),
            method="midpoint",
            options={"step_size": 0.1},
        )
        ys[-1].square().sum().backward()
        grads.append([y0.grad] + [p.grad for p in field.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
