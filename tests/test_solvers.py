"""Solver accuracy: convergence orders, tolerances against scipy, dense output, ALF reversibility.

Every test is parametrised over ``torchmali.SOLVERS`` (or its adaptive subset), so a new solver is
tested as soon as it is registered.
"""

from __future__ import annotations

import math

import pytest
import torch

import torchmali
from conftest import (
    ADAPTIVE,
    ALL_SOLVERS,
    TanhField,
    fitted_order,
    lotka_volterra,
    lotka_volterra_reference,
)
from torchmali.solvers import Dopri5

STEPS = (8, 16, 32, 64)


def _fixed_errors(linear, method, options, T=1.0):
    t = torch.tensor([0.0, T], dtype=linear.y0.dtype)
    exact = linear.exact(T)
    errors = []
    for n in STEPS:
        y = torchmali.odeint(
            linear.f, linear.y0, t, method=method, options={**options, "step_size": T / n}
        )
        errors.append(float((y[-1] - exact).abs().max()))
    return [T / n for n in STEPS], errors


@pytest.mark.parametrize("method", ALL_SOLVERS)
def test_convergence_order(method, linear):
    """Every solver, run on a fixed grid, converges at its declared order (±0.3)."""
    hs, errors = _fixed_errors(linear, method, {})
    order = fitted_order(hs, errors)
    assert abs(order - torchmali.SOLVERS[method].order) <= 0.3, (order, errors)


@pytest.mark.parametrize("eta", [0.9, 0.7])
def test_damped_alf_is_first_order(eta, linear):
    assert torchmali.ALF(eta).order == 1
    assert torchmali.ALF(1.0).order == 2
    hs, errors = _fixed_errors(linear, "alf", {"eta": eta})
    assert abs(fitted_order(hs, errors) - 1.0) <= 0.3, errors


LV_Y0 = [1.0, 1.0]
LV_TS = [0.0, 0.5, 1.3, 2.0, 2.7, 3.0]


@pytest.fixture(scope="module")
def lv_reference():
    return lotka_volterra_reference(LV_Y0, LV_TS)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_reaches_tolerance(method, lv_reference, f64):
    """Global error on Lotka–Volterra is a modest multiple of the tolerance, at every output time."""
    y0, t = torch.tensor(LV_Y0, dtype=f64), torch.tensor(LV_TS, dtype=f64)
    scale = 1.0 + lv_reference.abs()
    errors = {}
    for tol in (1e-4, 1e-6):
        ys = torchmali.odeint(lotka_volterra, y0, t, rtol=tol, atol=tol, method=method)
        assert ys.shape == (len(LV_TS), 2)
        errors[tol] = float(((ys - lv_reference).abs() / scale).max())
        assert errors[tol] <= 20 * tol, (tol, errors[tol])
    # Tightening the tolerance buys accuracy (the error is not a constant floor).
    assert errors[1e-6] < errors[1e-4] / 10


def test_dopri5_outputs_do_not_shorten_steps(lv_reference, f64):
    """dopri5 interpolates output times: the accepted grid is the same with and without them."""
    y0 = torch.tensor(LV_Y0, dtype=f64)
    dense = torchmali.solve(
        lotka_volterra, y0, torch.tensor(LV_TS, dtype=f64), rtol=1e-7, atol=1e-7
    )
    ends = torchmali.solve(
        lotka_volterra, y0, torch.tensor([LV_TS[0], LV_TS[-1]], dtype=f64), rtol=1e-7, atol=1e-7
    )
    assert dense.stats.n_accepted == ends.stats.n_accepted
    assert dense.stats.nfe_forward == ends.stats.nfe_forward
    assert torch.equal(dense.ts, ends.ts)
    assert torch.equal(dense.ys[-1], ends.ys[-1])
    interior = set(LV_TS[1:-1])
    assert not interior & set(dense.ts.tolist())  # outputs were interpolated, not stepped on
    assert float((dense.ys - lv_reference).abs().max()) < 1e-5


def test_non_dense_solver_lands_on_outputs(f64):
    """Solvers without dense output shorten their steps to land on every output time."""
    assert not torchmali.SOLVERS["tsit5"].dense_output
    t = torch.tensor(LV_TS, dtype=f64)
    sol = torchmali.solve(lotka_volterra, torch.tensor(LV_Y0, dtype=f64), t, method="tsit5")
    assert set(LV_TS) <= set(sol.ts.tolist())


def test_dopri5_interpolation_order(linear):
    """The continuous extension has local error O(h^5) inside one step (4th-order dense output)."""
    solver = Dopri5()

    def f(t, y):
        return linear.f(torch.tensor(t), y)

    hs = [0.4, 0.2, 0.1, 0.05]
    for theta in (0.3, 0.71):
        errors = []
        for h in hs:
            result = solver.step(f, 0.0, h, linear.y0, solver.init(f, 0.0, linear.y0))
            y = solver.interpolate(0.0, h, linear.y0, result, theta * h)
            errors.append(float((y - linear.exact(theta * h)).abs().max()))
        assert abs(fitted_order(hs, errors) - 5.0) <= 0.3, errors
        # The interpolant reproduces both end points exactly.
        assert torch.equal(solver.interpolate(0.0, h, linear.y0, result, 0.0), linear.y0)
        end = solver.interpolate(0.0, h, linear.y0, result, h)
        assert torch.allclose(end, result.y1, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# ALF: the inverse undoes the step.


def _alf_func(f64):
    field = TanhField(4, f64, seed=3).requires_grad_(False)

    def f(t, y):
        return field(torch.tensor(t, dtype=f64), y)

    return f


@pytest.mark.parametrize("eta", [1.0, 0.9, 0.7])
def test_alf_inverse_of_step(eta, f64):
    """inverse(step(z, v)) == (z, v) to 1e-12 over many random steps, undamped and damped."""
    f = _alf_func(f64)
    alf = torchmali.ALF(eta)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for _ in range(200):
        t0 = float(torch.rand((), generator=g, dtype=f64) * 4 - 2)
        h = float(torch.rand((), generator=g, dtype=f64) * 0.5 + 1e-3)
        z = torch.randn(3, 4, generator=g, dtype=f64)
        v = torch.randn(3, 4, generator=g, dtype=f64)
        result = alf.step(f, t0, h, z, v)
        assert result.error is not None and result.error.shape == z.shape
        z0, v0 = alf.inverse(f, t0 + h, h, result.y1, result.state1)
        worst = max(worst, float((z0 - z).abs().max()), float((v0 - v).abs().max()))
    assert worst <= 1e-12


def test_alf_chain_inverse_undamped(f64):
    """Undamped ALF reconstructs the start of a 100-step trajectory (no error growth)."""
    f = _alf_func(f64)
    alf = torchmali.ALF()
    z0 = torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=f64)
    z, v, t, h = z0, alf.init(f, 0.0, z0), 0.0, 0.03
    v0 = v
    for _ in range(100):
        result = alf.step(f, t, h, z, v)
        z, v, t = result.y1, result.state1, t + h
    for _ in range(100):
        z, v = alf.inverse(f, t, h, z, v)
        t -= h
    assert float((z - z0).abs().max()) <= 1e-12
    assert float((v - v0).abs().max()) <= 1e-12


def test_alf_eta_validation():
    for bad in (0.5, 0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="eta"):
            torchmali.ALF(bad)


# ---------------------------------------------------------------------------------------------
# Fixed grids land on the output times.


@pytest.mark.parametrize("method", ALL_SOLVERS)
def test_fixed_grid_lands_on_final_time(method, linear):
    """h = 0.3 on t = [0, 1]: the answer is y(1), the grid ends at 1.0 and has a short last step."""
    t = torch.tensor([0.0, 1.0], dtype=linear.y0.dtype)
    sol = torchmali.solve(linear.f, linear.y0, t, method=method, options={"step_size": 0.3})
    assert sol.ts.tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0], abs=1e-15)
    assert sol.ts[-1].item() == 1.0
    # The same as asking for every grid point explicitly: the last step is 0.9 -> 1.0.
    grid = sol.ts.to(linear.y0.dtype)
    explicit = torchmali.odeint(
        linear.f, linear.y0, grid, method=method, options={"step_size": 0.3}
    )
    assert torch.equal(sol.ys[-1], explicit[-1])
    if torchmali.SOLVERS[method].order >= 3:
        # Accurate methods are far closer to y(1) than y(0.9) is.
        err = float((sol.ys[-1] - linear.exact(1.0)).abs().max())
        gap = float((linear.exact(0.9) - linear.exact(1.0)).abs().max())
        assert err < 0.1 * gap


@pytest.mark.parametrize("method", ["euler", "rk4", "alf"])
def test_fixed_grid_hits_off_grid_outputs(method, linear):
    """Intermediate output times off the regular grid become grid points (no interpolation)."""
    t = torch.tensor([0.0, 0.45, 0.8, 1.0], dtype=linear.y0.dtype)
    sol = torchmali.solve(linear.f, linear.y0, t, method=method, options={"step_size": 0.3})
    assert sol.ts.tolist() == pytest.approx([0.0, 0.3, 0.45, 0.6, 0.8, 0.9, 1.0], abs=1e-15)
    assert {0.45, 0.8} <= set(sol.ts.tolist())
    # The first part of the grid is [0, 0.3, 0.45] in both solves, so y(0.45) is identical.
    short = torchmali.odeint(linear.f, linear.y0, t[:2], method=method, options={"step_size": 0.3})
    assert torch.equal(sol.ys[1], short[1])


def test_fixed_grid_near_output_has_no_sliver_step(linear):
    """A regular grid point within round-off of an output time is merged with it."""
    t = torch.tensor([0.0, 0.7], dtype=linear.y0.dtype)
    sol = torchmali.solve(linear.f, linear.y0, t, method="rk4", options={"step_size": 0.1})
    assert len(sol.ts) == 8
    assert float(torch.diff(sol.ts).min()) > 0.09
