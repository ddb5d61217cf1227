"""The memory-efficient gradient methods against direct backprop, gradcheck and finite differences.

``checkpoint``, ``binomial`` and ``mali`` differentiate the same discrete solve as ``direct``
(the accepted grid is a constant), so in float64 they must agree with it to round-off.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import torchmali
from torchmali.gradients import REGISTRY, names, resolve

#: every exact memory-efficient method of the registry (a new one is tested with no other edit)
EXACT = list(names(exact=True, memory_efficient=True))
REVERSIBLE = sorted(n for n, c in torchmali.SOLVERS.items() if c.reversible)


def accepts(gradient, method: str, fixed: bool = True) -> bool:
    """Whether the gradient method's own check lets it differentiate ``method``."""
    return resolve(gradient).accepts(torchmali.SOLVERS[method], fixed)


def solvers_for(gradient: str) -> list[str]:
    return [m for m in sorted(torchmali.SOLVERS) if accepts(gradient, m)]


def solver_for(gradient, fixed: bool = True) -> str:
    """ALF where the method takes it (the solver every method here shares), else rk4 / dopri5."""
    return "alf" if accepts(gradient, "alf", fixed) else ("rk4" if fixed else "dopri5")


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
    with pytest.raises(ValueError, match="checkpoints must be an integer >= 1, got 0"):
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
    """Drop the pairs a method refuses by design (e.g. mali with a non-reversible solver)."""
    return [c for c in gradient_cases if accepts(c[0], c[1], bool(c[2] and "step_size" in c[2]))]


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
    for method, opts in [
        (solver_for(gradient), {"step_size": 0.1}),
        (solver_for(gradient, False), None),
    ]:
        _, ref = grads(func, y0, t, method, opts, "direct")
        _, got = grads(func, y0, t, method, opts, gradient)
        assert max_rel(got, ref) <= 1e-10


def gradcheck_cases():
    for gradient in ["direct", *EXACT]:
        for method in solvers_for(gradient):
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
    needs_reversible = REGISTRY[gradient].needs_reversible
    method, opts = ("alf", {"step_size": 1e-3}) if needs_reversible else ("dopri5", None)

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
        ys = torchmali.odeint(
            func, y0, t, method=solver_for(gradient), options={"step_size": 0.1}, gradient=g
        )
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


@pytest.mark.parametrize("gradient", names(memory_efficient=True))
def test_double_backward_is_refused(gradient, f64):
    """The refusal recommends gradient='direct', the one method that supports it."""
    y0 = torch.ones(2, dtype=f64, requires_grad=True)
    ys = torchmali.odeint(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 1.0], dtype=f64),
        method=solver_for(gradient),
        options={"step_size": 0.1},
        gradient=gradient,
    )
    with pytest.raises(RuntimeError, match="double backward") as info:
        torch.autograd.grad(ys.sum(), y0, create_graph=True)
    assert re.findall(r"[Uu]se gradient='(\w+)'", str(info.value)) == ["direct"]


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


def test_float32_gradients_close_to_direct():
    torch.manual_seed(8)
    func = MLP(3, 16)
    y0 = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0])
    for g in EXACT:
        _, ref = grads(func, y0, t, solver_for(g), {"step_size": 0.05}, "direct")
        _, got = grads(func, y0, t, solver_for(g), {"step_size": 0.05}, g)
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
