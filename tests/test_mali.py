"""MALI's reconstruction checks: drift and ALF's parasitic mode measured, reported, warned about
or raised, and its backward pass at one evaluation per step."""

from __future__ import annotations

import math
import re

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


def test_mali_default_is_safe_on_damped_alf(f64):
    """Issue 11.3: eta=0.75, T=5, h=0.025 drifted to ~1e43 and the gradient was off by ~1e34
    while the default only warned. The default now stores a point every K steps, K from
    1/|1-2 eta| = 2, float64's epsilon and drift_tol (K = 35), so the gradient equals direct
    backprop with no fallback needed."""
    torch.manual_seed(7)
    func = MLP(3, 16).to(f64)
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 5.0], dtype=f64)
    healthy, _ = grads(func, y0, t, "alf", {"step_size": 0.1}, "mali")
    assert healthy.stats.drift < 1e-12
    assert healthy.stats.checkpoint_interval is None  # eta = 1: nothing stored, no extra sync
    assert healthy.stats.fallback_segments == 0 and healthy.stats.recomputed_steps == 0
    damped = {"step_size": 0.025, "eta": 0.75}
    sol, got = grads(func, y0, t, "alf", damped, "mali")
    _, ref = grads(func, y0, t, "alf", damped, "direct")
    assert max_rel(got, ref) <= 1e-8
    assert sol.stats.checkpoint_interval == 35
    assert sol.stats.drift <= 1e-4 and sol.stats.fallback_segments == 0
    assert sol.stats.memory_bytes > healthy.stats.memory_bytes  # the 5 stored points


def test_mali_without_the_safety_net_raises_by_default_naming_the_fix(f64):
    """Changed deliberately: with the net switched off (no points, no fallback) a drift above
    drift_tol is an error by default, whose message names the fixes; on_drift="warn" keeps the
    old behaviour (a warning and the inaccurate gradient)."""
    torch.manual_seed(7)
    func = MLP(3, 16).to(f64)
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 5.0], dtype=f64)
    damped = dict(method="alf", options={"step_size": 0.025, "eta": 0.75})
    bare = dict(checkpoint_every=None, fallback=False)
    sol = torchmali.solve(func, y0, t, gradient=torchmali.Mali(**bare), **damped)
    with pytest.raises(RuntimeError, match=r"drift_tol=0.0001") as info:
        sol.ys.sum().backward()
    message = str(info.value)
    assert "eta=0.75" in message and "= 2 per step" in message
    assert "Mali(fallback=True)" in message and "Mali(checkpoint_every=K)" in message
    assert "gradient='checkpoint'" in message and re.search(r"measured: drift \d", message)
    sol = torchmali.solve(func, y0, t, gradient=torchmali.Mali(**bare, on_drift="warn"), **damped)
    with pytest.warns(torchmali.ReconstructionDriftWarning, match=r"eta=0.75\) .* = 2 per step"):
        sol.ys.sum().backward()
    assert sol.stats.drift > 1e-4 and sol.stats.fallback_segments == 0


def test_mali_drift_without_damping_names_its_cause():
    """eta = 1 in float32 on z' = -5z over [0, 2]: the exact inverse expands round-off (the
    amplification is 1, so no interval is imposed; the measured drift at t0 is what catches
    it). The default recomputes the solve exactly; with fallback=False the error names the
    cause."""
    y0 = torch.ones(3, requires_grad=True)
    t = torch.tensor([0.0, 2.0])

    def solve(gradient):
        return torchmali.solve(lambda t, y: -5.0 * y, y0, t, method="alf",
                               options={"step_size": 0.05}, gradient=gradient)  # fmt: skip

    (ref,) = torch.autograd.grad(solve("direct").ys[-1].sum(), y0)
    sol = solve(torchmali.Mali(parasitic_tol=None))
    (got,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)
    assert sol.stats.fallback_segments == 1 and sol.stats.recomputed_steps == 39
    assert sol.stats.checkpoint_interval is None
    sol = solve(torchmali.Mali(parasitic_tol=None, fallback=False))
    with pytest.raises(RuntimeError, match=r"measured: drift \d") as info:
        sol.ys[-1].sum().backward()
    message = str(info.value)
    assert "With eta=1" in message and "float64" in message and "Damped" not in message
    assert sol.stats.drift > 1e-4


def test_mali_refuses_a_non_finite_reconstruction():
    """A reconstruction that overflows gives a NaN gradient: an error even with on_drift="warn";
    the exact recomputation of the segment overflows too here, and is refused as well."""

    def field(t, y):  # finite in the forward pass, infinite when the backward pass re-evaluates
        return -y * (math.inf if torch.is_grad_enabled() and float(t) > 0 else 1.0)

    for gradient, match in [
        (torchmali.Mali(fallback=False, on_drift="warn"), "overflowed"),
        (torchmali.Mali(), "non-finite gradient"),
    ]:
        sol = torchmali.solve(
            field, torch.ones(3, requires_grad=True), torch.tensor([0.0, 1.0]), method="alf",
            options={"step_size": 0.1}, gradient=gradient,
        )  # fmt: skip
        with pytest.raises(RuntimeError, match=match):
            sol.ys[-1].sum().backward()
    assert sol.stats.fallback_segments is None  # raised before the statistics were written


def test_mali_warning_is_shown_once_per_place():
    """A training loop's many drifting backward passes give one warning, not one per batch."""
    import warnings

    def backward(lam: float) -> None:
        sol = torchmali.solve(
            lambda t, y: lam * y, torch.ones(3, requires_grad=True), torch.tensor([0.0, 2.0]),
            method="alf", options={"step_size": 0.05},
            gradient=torchmali.Mali(parasitic_tol=None, fallback=False, on_drift="warn"),
        )  # fmt: skip
        sol.ys[-1].sum().backward()

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for lam in (-5.0, -5.5, -6.0):  # three different drifts, all above drift_tol
            backward(lam)
    assert len([w for w in record if w.category is torchmali.ReconstructionDriftWarning]) == 1


def test_mali_catches_alf_blow_up_on_dissipative_dynamics(f64):
    """ALF with eta=1 on z' = -z, T = 20, h = 0.05 returns z(T) ≈ -187 instead of 2e-9. The
    drift at t0 stays small (7e-6) yet the reconstruction through the parasitic mode made the
    parameter gradient 5e-4 wrong: the failed consistency check sends the solve to exact
    recomputation, and the warning says the forward solution is far from the ODE's."""
    y0 = torch.ones(1, dtype=f64, requires_grad=True)
    w = torch.ones((), dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 20.0], dtype=f64)

    def solve(gradient, t=t):
        return torchmali.solve(
            lambda t, y: -w * y,
            y0,
            t,
            method="alf",
            options={"step_size": 0.05},
            gradient=gradient,
            params=[w],
        )

    ref = torch.autograd.grad(solve("direct").ys[-1].sum(), [y0, w])
    sol = solve("mali")
    assert float(sol.ys[-1].detach()) < -100
    with pytest.warns(torchmali.ReconstructionDriftWarning, match="parasitic"):
        got = torch.autograd.grad(sol.ys[-1].sum(), [y0, w])
    assert sol.stats.parasitic > 10  # 19.8 here: the mode dwarfs the derivative
    assert sol.stats.fallback_segments == 1 and max_rel(got, ref) <= 1e-12
    unsafe = solve(torchmali.Mali(fallback=False))
    with pytest.warns(torchmali.ReconstructionDriftWarning, match="parasitic"):
        got = torch.autograd.grad(unsafe.ys[-1].sum(), [y0, w])
    assert unsafe.stats.drift < 1e-4 < max_rel(got, ref)  # what the fallback prevents
    ok = solve("mali", torch.tensor([0.0, 1.0], dtype=f64))
    ok.ys[-1].sum().backward()
    assert ok.stats.parasitic < 1e-2 and ok.stats.fallback_segments == 0


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
