"""The memory-efficient gradient methods against direct backprop, gradcheck and finite differences.

``checkpoint``, ``binomial`` and ``mali`` differentiate the same discrete solve as ``direct``
(the accepted grid is a constant), so in float64 they must agree with it to round-off.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchmali
from torchmali.gradients import REGISTRY
from torchmali.solvers import AdamsBashforthMoulton

EXACT = ["checkpoint", "binomial", "mali"]
REVERSIBLE = sorted(n for n, c in torchmali.SOLVERS.items() if c.reversible)


# Solvers whose state is a tuple of tensors (the Adams history); checkpoint/binomial need the
# core branch's tuple-state support (they flip to XPASS, i.e. fail, once it is merged).
TUPLE_STATE = sorted(
    n for n, c in torchmali.SOLVERS.items() if issubclass(c, AdamsBashforthMoulton)
)
_NEEDS_TUPLE_STATES = pytest.mark.xfail(
    strict=True, reason="needs tuple solver states from the core branch"
)


def solvers_for(gradient: str) -> list[str]:
    """Every solver the gradient method accepts (scipy_solver has no gradient at all)."""
    if gradient == "mali":
        return REVERSIBLE
    return sorted(n for n, c in torchmali.SOLVERS.items() if not c.forward_only)


class MLP(nn.Module):
    """A time-dependent tanh MLP vector field."""

    def __init__(self, dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        tt = t.expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], -1))))


class Conv(nn.Module):
    """A convolutional vector field (the image-classification setting), with GroupNorm."""

    def __init__(self, ch: int = 2) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(ch, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.c2 = nn.Conv2d(4, ch, 3, padding=1)

    def forward(self, t, y):
        return self.c2(torch.relu(self.norm(self.c1(y)))) * torch.cos(t)


def grads(func, y0, t, method, options, gradient, rtol=1e-5, atol=1e-7):
    sol = torchmali.solve(
        func, y0, t, rtol=rtol, atol=atol, method=method, options=options, gradient=gradient
    )
    ys = (
        sol.ys if isinstance(sol.ys, torch.Tensor) else torch.cat([y.flatten(1) for y in sol.ys], 1)
    )
    w = torch.linspace(-1, 1, ys[0].numel(), dtype=ys.dtype).reshape(ys[0].shape)
    loss = (ys**2).sum() + (ys * w).sum()
    inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), *func.parameters()]
    return sol, torch.autograd.grad(loss, inputs)


def max_rel(a, b) -> float:
    return max(float((x - y).norm() / (y.norm() + 1e-300)) for x, y in zip(a, b, strict=True))


def test_registry_names_and_aliases():
    assert {
        "direct",
        "mali",
        "checkpoint",
        "aca",
        "anode",
        "binomial",
        "revolve",
        "adjoint",
    } <= set(REGISTRY)
    assert REGISTRY["aca"] is REGISTRY["anode"] is torchmali.Checkpoint
    assert REGISTRY["revolve"] is torchmali.Binomial
    with pytest.raises(ValueError, match="unknown gradient method 'nope'.*mali"):
        torchmali.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), gradient="nope")
    with pytest.raises(TypeError, match="gradient must be"):
        torchmali.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), gradient=3)


def test_config_objects_are_validated():
    with pytest.raises(ValueError, match="checkpoints=K"):
        torchmali.Binomial(checkpoints=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        torchmali.Mali(checkpoint_every=0)
    with pytest.raises(ValueError, match="drift_tol"):
        torchmali.Mali(drift_tol=-1.0)
    with pytest.raises(ValueError, match="on_drift"):
        torchmali.Mali(on_drift="ignore")


@pytest.mark.parametrize("method", sorted(set(torchmali.SOLVERS) - set(REVERSIBLE)))
def test_mali_refuses_non_reversible_solvers(method):
    opts = None if torchmali.SOLVERS[method].adaptive else {"step_size": 0.1}
    with pytest.raises(ValueError, match="method='alf'"):
        torchmali.odeint(
            lambda t, y: -y,
            torch.ones(2),
            torch.tensor([0.0, 1.0]),
            method=method,
            options=opts,
            gradient="mali",
        )


CASES = [
    ("alf", {"step_size": 0.1}),
    ("alf", None),
    ("alf", {"step_size": 0.1, "eta": 0.8}),
    ("rk4", {"step_size": 0.15}),
    ("euler", {"step_size": 0.1}),
    ("dopri5", None),
    ("tsit5", None),
    ("bosh3", None),
    ("adaptive_heun", None),
]


def valid(gradient_cases):
    """Drop (mali, non-reversible solver) pairs, which are refused by design."""
    return [c for c in gradient_cases if c[0] != "mali" or c[1] in REVERSIBLE]


@pytest.mark.parametrize("gradient,method,options", valid([(g, *c) for g in EXACT for c in CASES]))
@pytest.mark.parametrize("times", [[0.0, 1.7], [0.0, 0.3, 1.1, 1.7]])
def test_equals_direct_mlp(gradient, method, options, times, f64):
    torch.manual_seed(0)
    func = MLP().to(f64)
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.tensor(times, dtype=f64)
    ref_sol, ref = grads(func, y0, t, method, options, "direct")
    sol, got = grads(func, y0, t, method, options, gradient)
    assert torch.equal(sol.ts, ref_sol.ts)  # the same accepted grid
    assert torch.allclose(sol.ys, ref_sol.ys, rtol=0, atol=1e-13)
    assert max_rel(got, ref) <= 1e-10
    assert sol.stats.nfe_backward > 0


CONV_CASES = [("alf", {"step_size": 0.25}), ("alf", None), ("dopri5", None)]


@pytest.mark.parametrize(
    "gradient,method,options", valid([(g, *c) for g in EXACT for c in CONV_CASES])
)
def test_equals_direct_conv(gradient, method, options, f64):
    torch.manual_seed(1)
    func = Conv().to(f64)
    y0 = torch.randn(2, 2, 5, 5, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
    _, ref = grads(func, y0, t, method, options, "direct", rtol=1e-4, atol=1e-6)
    _, got = grads(func, y0, t, method, options, gradient, rtol=1e-4, atol=1e-6)
    assert max_rel(got, ref) <= 1e-10


@pytest.mark.parametrize("gradient", EXACT)
def test_tuple_state_and_decreasing_time(gradient, f64):
    torch.manual_seed(2)
    lin = nn.Linear(5, 5).to(f64)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t, y):
            a, b = y
            z = torch.tanh(self.lin(torch.cat([a, b.flatten(1)], 1)))
            return z[:, :1] * a, z[:, 1:].reshape(b.shape) - 0.1 * b

    func = Pair()
    y0 = (
        torch.randn(3, 1, dtype=f64, requires_grad=True),
        torch.randn(3, 2, 2, dtype=f64, requires_grad=True),
    )
    t = torch.tensor([1.0, 0.4, -0.5], dtype=f64)
    for method, opts in [("alf", {"step_size": 0.1}), ("alf", None)]:
        _, ref = grads(func, y0, t, method, opts, "direct")
        _, got = grads(func, y0, t, method, opts, gradient)
        assert max_rel(got, ref) <= 1e-10


def gradcheck_cases():
    for gradient in ["direct", *EXACT]:
        for method in solvers_for(gradient):
            if gradient in ("checkpoint", "binomial") and method in TUPLE_STATE:
                yield pytest.param(gradient, method, marks=_NEEDS_TUPLE_STATES)
            else:
                yield gradient, method


@pytest.mark.parametrize("gradient,method", list(gradcheck_cases()))
def test_gradcheck(gradient, method, f64):
    """Every valid (solver, gradient) pair, on a fixed grid (an adaptive grid moves under the
    finite-difference perturbation, while every method treats it as a constant)."""
    torch.manual_seed(3)
    w = torch.randn(2, 2, dtype=f64, requires_grad=True)
    b = torch.randn(2, dtype=f64, requires_grad=True)
    y0 = torch.randn(2, 2, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.35, 0.6], dtype=f64)

    def fn(y0, w, b):
        f = lambda t, y: torch.tanh(y @ w.T + b)  # noqa: E731
        return torchmali.odeint(
            f, y0, t, method=method, options={"step_size": 0.2}, gradient=gradient, params=[w, b]
        )

    assert torch.autograd.gradcheck(fn, (y0, w, b), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("gradient", ["direct", *EXACT])
def test_time_gradients_match_finite_differences(gradient, f64):
    """∂L/∂t_k = <∂L/∂y(t_k), f(t_k, y(t_k))>; ∂L/∂t0 includes the effect of moving the start."""
    torch.manual_seed(4)
    func = MLP(2, 6).to(f64)
    y0 = torch.randn(3, 2, dtype=f64)
    method, opts = ("alf", {"step_size": 1e-3}) if gradient == "mali" else ("dopri5", None)

    def loss(t):
        ys = torchmali.odeint(
            func, y0, t, rtol=1e-11, atol=1e-12, method=method, options=opts, gradient=gradient
        )
        return (ys[1:] ** 2).sum() + ys[-1].sum()

    t = torch.tensor([0.1, 0.6, 1.2], dtype=f64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(t), t)
    eps = 1e-4
    for k in range(3):
        tp, tm = t.detach().clone(), t.detach().clone()
        tp[k] += eps
        tm[k] -= eps
        fd = ((loss(tp) - loss(tm)) / (2 * eps)).detach()
        assert abs(float(g[k]) - float(fd)) <= 1e-4 * (1 + abs(float(fd))), (k, g, fd)


def test_t0_gradient_is_not_the_sum_of_step_partials(f64):
    """The reference implementation's ∂L/∂t0 is 10x off; ours matches the analytic value."""
    lam = 0.7
    y0 = torch.tensor([1.3], dtype=f64)
    t = torch.tensor([0.2, 2.0], dtype=f64, requires_grad=True)
    ys = torchmali.odeint(
        lambda t, y: -lam * y, y0, t, method="alf", options={"step_size": 1e-3}, gradient="mali"
    )
    (g,) = torch.autograd.grad(ys[-1].sum(), t)
    exact_dt0 = lam * 1.3 * math.exp(-lam * 1.8)  # d/dt0 of y0 exp(-lam (t1 - t0))
    assert abs(float(g[0]) - exact_dt0) < 1e-5
    assert abs(float(g[1]) + exact_dt0) < 1e-5


@pytest.mark.parametrize("gradient", EXACT)
def test_batchnorm_buffers_and_dropout_masks_match_direct(gradient, f64):
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 16)
            self.bn = nn.BatchNorm1d(16)
            self.drop = nn.Dropout(0.3)
            self.l2 = nn.Linear(16, 4)

        def forward(self, t, y):
            return self.l2(self.drop(torch.tanh(self.bn(self.l1(y)))))

    torch.manual_seed(5)
    base = Stateful().to(f64)
    y0 = torch.randn(8, 4, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
    results = {}
    for g in ("direct", gradient):
        func = Stateful().to(f64)
        func.load_state_dict(base.state_dict())
        torch.manual_seed(123)
        ys = torchmali.odeint(func, y0, t, method="alf", options={"step_size": 0.1}, gradient=g)
        # l1.bias has an exactly-zero true gradient through BatchNorm: compare the others.
        params = [p for n, p in func.named_parameters() if n != "l1.bias"]
        gr = torch.autograd.grad((ys**2).sum(), [y0, *params])
        results[g] = (ys.detach(), gr, [b.clone() for b in func.buffers()], torch.rand(3))
    (ys_d, g_d, buf_d, rng_d), (ys_g, g_g, buf_g, rng_g) = results["direct"], results[gradient]
    assert torch.equal(ys_d, ys_g)  # same dropout masks in the forward pass
    assert max_rel(g_g, g_d) <= 1e-10  # ... and in the recomputation
    for a, b in zip(buf_d, buf_g, strict=True):
        assert torch.equal(a, b)  # running statistics updated once per forward evaluation
    assert torch.equal(rng_d, rng_g)  # the global RNG stream advanced identically


@pytest.mark.parametrize("gradient", EXACT)
def test_double_backward_is_refused(gradient, f64):
    y0 = torch.ones(2, dtype=f64, requires_grad=True)
    ys = torchmali.odeint(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 1.0], dtype=f64),
        method="alf",
        options={"step_size": 0.1},
        gradient=gradient,
    )
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


def test_plain_function_closing_over_parameters_needs_params(f64):
    w = torch.ones(2, dtype=f64, requires_grad=True)
    with pytest.raises(ValueError, match="params="):
        torchmali.odeint(
            lambda t, y: -w * y,
            torch.ones(2, dtype=f64),
            torch.tensor([0.0, 1.0], dtype=f64),
            method="alf",
            gradient="mali",
        )


def test_binomial_schedule_is_optimal(f64):
    from functools import lru_cache

    from torchmali.gradients.binomial import optimal_recomputations, revolve_cost

    @lru_cache(None)
    def brute(n, slots):  # min forward steps to reverse n steps with `slots` free checkpoints
        if n <= 1:
            return 0
        if slots == 0:
            return n * (n - 1) // 2
        return min(m + brute(n - m, slots - 1) + brute(m, slots) for m in range(1, n))

    for k in range(1, 6):
        for n in range(1, 40):
            assert revolve_cost(n, k) == brute(n, k - 1)
    torch.manual_seed(6)
    func = MLP(2, 4).to(f64)
    y0 = torch.randn(2, 2, dtype=f64, requires_grad=True)
    for k in (2, 3, 5):
        sol, _ = grads(
            func,
            y0,
            torch.tensor([0.0, 3.0], dtype=f64),
            "alf",
            {"step_size": 0.1},
            torchmali.Binomial(checkpoints=k),
        )
        n = sol.stats.n_accepted
        assert n == 30
        assert (
            sol.stats.recomputed_steps
            == sol.stats.optimal_recomputed_steps
            == optimal_recomputations(n, k)
        )
    sol, _ = grads(
        func,
        y0,
        torch.tensor([0.0, 3.0], dtype=f64),
        "dopri5",
        None,
        torchmali.Binomial(checkpoints=3),
        rtol=1e-8,
    )
    n = sol.stats.n_accepted
    assert (
        sol.stats.optimal_recomputed_steps
        <= sol.stats.recomputed_steps
        == revolve_cost(n, 3)
        <= sol.stats.optimal_recomputed_steps + n - 1
    )


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


def test_float32_gradients_close_to_direct():
    torch.manual_seed(8)
    func = MLP(3, 16)
    y0 = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0])
    _, ref = grads(func, y0, t, "alf", {"step_size": 0.05}, "direct")
    for g in EXACT:
        _, got = grads(func, y0, t, "alf", {"step_size": 0.05}, g)
        assert max_rel(got, ref) <= 1e-5


def test_engine_grad_matches_autograd_grad(f64):
    """The direct engine call used per step equals torch.autograd.grad (unused inputs: None)."""
    from torchmali.gradients._backward import engine_grad

    lin = nn.Linear(3, 3).double()
    unused = nn.Parameter(torch.randn(2, dtype=f64))
    x = torch.randn(4, 3, dtype=f64, requires_grad=True)
    out = torch.tanh(lin(x))
    cot = torch.randn_like(out)
    inputs = (x, *lin.parameters(), unused)
    fast = engine_grad((out,), inputs, (cot,), retain_graph=True)
    ref = torch.autograd.grad(out, inputs, cot, allow_unused=True, retain_graph=True)
    assert fast[-1] is None and ref[-1] is None
    for a, b in zip(fast[:-1], ref[:-1], strict=True):
        assert torch.equal(a, b)
    # a cotangent of the wrong shape takes the public path and its error message
    with pytest.raises(RuntimeError, match="shape"):
        engine_grad((out,), inputs, (cot[:2],))
