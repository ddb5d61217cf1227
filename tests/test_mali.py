"""MALI's reconstruction checks: drift and ALF's parasitic mode measured, reported, warned about
or raised, and its backward pass at one evaluation per step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchmali


class MLP(nn.Module):
    """A time-dependent tanh MLP vector field."""

    def __init__(self, dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        tt = t.expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], -1))))


def grads(func, y0, t, method, options, gradient):
    sol = torchmali.solve(
        func, y0, t, rtol=1e-5, atol=1e-7, method=method, options=options, gradient=gradient
    )
    w = torch.linspace(-1, 1, sol.ys[0].numel(), dtype=sol.ys.dtype).reshape(sol.ys[0].shape)
    loss = (sol.ys**2).sum() + (sol.ys * w).sum()
    return sol, torch.autograd.grad(loss, [y0, *func.parameters()])


def max_rel(a, b) -> float:
    return max(float((x - y).norm() / (y.norm() + 1e-300)) for x, y in zip(a, b, strict=True))


def test_mali_drift_is_measured_reported_and_bounded(f64):
    torch.manual_seed(7)
    func = MLP(3, 16).to(f64)
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 5.0], dtype=f64)
    healthy, _ = grads(func, y0, t, "alf", {"step_size": 0.1}, "mali")
    assert healthy.stats.drift < 1e-12
    damped = dict(method="alf", options={"step_size": 0.025, "eta": 0.75})
    sol = torchmali.solve(func, y0, t, gradient=torchmali.Mali(drift_tol=1e-6), **damped)
    with pytest.warns(torchmali.ReconstructionDriftWarning, match=r"eta=0.75\) .* = 2 per step"):
        sol.ys.sum().backward()
    assert sol.stats.drift > 1e-6
    sol = torchmali.solve(
        func, y0, t, gradient=torchmali.Mali(drift_tol=1e-6, on_drift="raise"), **damped
    )
    with pytest.raises(RuntimeError, match="drift"):
        sol.ys.sum().backward()
    # A checkpoint every 10 steps restarts the reconstruction: drift bounded, gradient exact.
    sol, got = grads(
        func, y0, t, damped["method"], damped["options"], torchmali.Mali(checkpoint_every=10)
    )
    _, ref = grads(func, y0, t, damped["method"], damped["options"], "direct")
    assert sol.stats.drift < 1e-6
    assert max_rel(got, ref) < 1e-8


def test_mali_drift_without_damping_names_its_cause():
    """eta = 1 in float32 on z' = -5z over [0, 2]: the exact inverse expands round-off."""
    y0 = torch.ones(3, requires_grad=True)
    sol = torchmali.solve(
        lambda t, y: -5.0 * y,
        y0,
        torch.tensor([0.0, 2.0]),
        method="alf",
        options={"step_size": 0.05},
        gradient=torchmali.Mali(parasitic_tol=None),
    )
    with pytest.warns(torchmali.ReconstructionDriftWarning) as record:
        sol.ys[-1].sum().backward()
    message = str(record[0].message)
    assert sol.stats.drift > 1e-4
    assert "With eta=1" in message and "float64" in message and "Damped" not in message
    strict = torchmali.Mali(parasitic_tol=None, on_drift="raise")
    sol = torchmali.solve(
        lambda t, y: -5.0 * y, y0, torch.tensor([0.0, 2.0]), method="alf",
        options={"step_size": 0.05}, gradient=strict,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"measured: drift \d"):
        sol.ys[-1].sum().backward()


def test_mali_refuses_a_non_finite_reconstruction():
    """A reconstruction that overflows gives a NaN gradient: an error even with on_drift="warn"."""

    def field(t, y):  # finite in the forward pass, infinite when the backward pass re-evaluates
        return -y * (math.inf if torch.is_grad_enabled() and float(t) > 0 else 1.0)

    sol = torchmali.solve(
        field, torch.ones(3, requires_grad=True), torch.tensor([0.0, 1.0]), method="alf",
        options={"step_size": 0.1}, gradient="mali",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="overflowed"):
        sol.ys[-1].sum().backward()
    assert sol.stats.drift == math.inf


def test_mali_warning_is_shown_once_per_place():
    """A training loop's many drifting backward passes give one warning, not one per batch."""
    import warnings

    def backward(lam: float) -> None:
        sol = torchmali.solve(
            lambda t, y: lam * y, torch.ones(3, requires_grad=True), torch.tensor([0.0, 2.0]),
            method="alf", options={"step_size": 0.05}, gradient=torchmali.Mali(parasitic_tol=None),
        )  # fmt: skip
        sol.ys[-1].sum().backward()

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for lam in (-5.0, -5.5, -6.0):  # three different drifts, all above drift_tol
            backward(lam)
    assert len([w for w in record if w.category is torchmali.ReconstructionDriftWarning]) == 1


def test_mali_catches_alf_blow_up_on_dissipative_dynamics(f64):
    """ALF with eta=1 on z' = -z, T = 20, h = 0.05 returns z(T) ≈ -187 instead of 2e-9."""
    y0 = torch.ones(1, dtype=f64, requires_grad=True)
    sol = torchmali.solve(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 20.0], dtype=f64),
        method="alf",
        options={"step_size": 0.05},
        gradient="mali",
    )
    assert float(sol.ys[-1].detach()) < -100
    with pytest.warns(torchmali.ReconstructionDriftWarning, match="parasitic"):
        sol.ys[-1].sum().backward()
    assert sol.stats.parasitic > 10  # 19.8 here: the mode dwarfs the derivative
    ok = torchmali.solve(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 1.0], dtype=f64),
        method="alf",
        options={"step_size": 0.05},
        gradient="mali",
    )
    ok.ys[-1].sum().backward()
    assert ok.stats.parasitic < 1e-2


class _BatchNormField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("options", [{"step_size": 0.1}, {}])
def test_mali_backward_costs_one_evaluation_per_step(options, f64):
    """No extra evaluation: v0 keeps its graph and the parasitic check reuses the sweep's."""
    torch.manual_seed(5)
    func = MLP().double()
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=f64)
    sol = torchmali.solve(func, y0, t, method="alf", gradient="mali", options=options)
    sol.ys[-1].sum().backward()
    n = sol.stats.n_accepted
    assert n > 2
    assert sol.stats.nfe_backward == n
    assert 0 < sol.stats.parasitic < 1e-2  # healthy: the extrapolated f(t_N, z_N) agrees with v_N
    # with buffers (updated in place by the sweep) v0 is evaluated again in the backward pass
    bn = _BatchNormField().double()
    sol = torchmali.solve(bn, y0, t, method="alf", gradient="mali", options=options)
    sol.ys[-1].sum().backward()
    assert sol.stats.nfe_backward == sol.stats.n_accepted + 1
