"""The continuous backsolve adjoint: agreement with direct backprop to solver tolerance, seminorm,
the ANODE counterexample (its gradient is not the discrete one on coarse grids), errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchmali import SOLVERS, Adjoint, odeint, odeint_adjoint, solve
from torchmali.gradients import resolve
from torchmali.solvers import AdamsBashforthMoulton, RungeKutta

DT = torch.float64


class MLPField(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16, act: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) + 0.1 * torch.sin(t) * y


def _field(seed: int = 0, scale: float = 1.0, **kw) -> MLPField:
    torch.manual_seed(seed)
    f = MLPField(**kw).to(DT)
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(scale)
    return f


def _grads(func, y0, t, gradient, inputs=None, **kw) -> torch.Tensor:
    """The gradient of a loss on every output w.r.t. y0 (and ``inputs``, default: parameters)."""
    loss = _loss(odeint(func, y0, t, gradient=gradient, **kw))
    y0s = y0 if isinstance(y0, tuple) else (y0,)
    inputs = list(func.parameters()) if inputs is None else list(inputs)
    return _flat(torch.autograd.grad(loss, (*y0s, *inputs)))


def _loss(ys) -> torch.Tensor:
    """A weighted sum of squares of every output (so that no symmetry hides an error)."""
    ys = ys if isinstance(ys, tuple) else (ys,)
    weights = [torch.linspace(0.5, 1.5, y.numel(), dtype=DT).view_as(y) for y in ys]
    return sum((w * y**2).sum() for w, y in zip(weights, ys, strict=True))


def _flat(gs) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


SMOOTH = dict(method="dopri5", rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "t", [[0.0, 0.3, 0.7, 1.2], [1.0, 0.4, -0.3]], ids=["increasing", "decreasing"]
)
def test_matches_direct_on_smooth_problem(t):
    func = _field()
    y0 = torch.randn(4, 3, dtype=DT, requires_grad=True)
    t = torch.tensor(t, dtype=DT)
    g_direct = _grads(func, y0, t, "direct", **SMOOTH)
    g_adj = _grads(func, y0, t, "adjoint", **SMOOTH)
    assert _rel(g_adj, g_direct) < 1e-7


def test_alias_and_configuration_object():
    assert isinstance(resolve("backsolve"), Adjoint)
    assert resolve("adjoint") == Adjoint()
    opts = {"norm": "seminorm"}
    adj = Adjoint(options=opts)
    opts["norm"] = "mixed"  # the caller's dict is copied, never aliased
    assert adj.options["norm"] == "seminorm"


def test_tuple_state():
    torch.manual_seed(1)
    w = torch.randn(3, 3, dtype=DT, requires_grad=True)

    class Coupled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(w.detach().clone())

        def forward(self, t, y):
            x, v = y
            return v, -torch.tanh(x @ self.w) - 0.1 * v

    func = Coupled()
    y0 = (torch.randn(2, 3, dtype=DT, requires_grad=True), torch.randn(2, 3, dtype=DT))
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    y0[1].requires_grad_(True)
    g_direct = _grads(func, y0, t, "direct", **SMOOTH)
    g_adj = _grads(func, y0, t, "adjoint", **SMOOTH)
    assert _rel(g_adj, g_direct) < 1e-7


def test_plain_function_with_adjoint_params():
    torch.manual_seed(2)
    w = (0.5 * torch.randn(3, 3, dtype=DT)).requires_grad_()
    b = torch.randn(3, dtype=DT, requires_grad=True)

    def f(t, y):
        return torch.tanh(y @ w + b)

    y0 = torch.randn(4, 3, dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    ys = odeint_adjoint(f, y0, t, rtol=1e-10, atol=1e-10, adjoint_params=(w, b))
    g_adj = _flat(torch.autograd.grad(ys.square().sum(), (y0, w, b)))
    ys = odeint(f, y0, t, rtol=1e-10, atol=1e-10)
    g_direct = _flat(torch.autograd.grad(ys.square().sum(), (y0, w, b)))
    assert _rel(g_adj, g_direct) < 1e-7
    with pytest.raises(ValueError, match="params"):
        odeint_adjoint(f, y0, t)  # closes over trainable tensors: refused, not zero gradients


def test_time_gradient_matches_direct():
    func = _field()
    y0 = torch.randn(2, 3, dtype=DT)
    grads = []
    for gradient in ("direct", "adjoint"):
        t = torch.tensor([0.1, 0.6, 1.0], dtype=DT, requires_grad=True)
        ys = odeint(func, y0, t, gradient=gradient, **SMOOTH)
        grads.append(torch.autograd.grad(ys.square().sum(), t)[0])
    assert _rel(grads[1], grads[0]) < 1e-7


@pytest.mark.parametrize("method", sorted(n for n, c in SOLVERS.items() if not c.forward_only))
def test_every_solver(method):
    """Fixed grids (the forward grid is replayed in reverse) and adaptive solvers, ALF included."""
    func = _field()
    y0 = torch.randn(3, 3, dtype=DT, requires_grad=True)
    # On fixed grids 0.375 (a grid point of step 1/32) instead of 0.4: an off-grid output is
    # interpolated (torchdiffeq's fixed grids), an O(h^2) change the adjoint does not share.
    t = torch.tensor([0.0, 0.4 if SOLVERS[method].adaptive else 0.375, 1.0], dtype=DT)
    if SOLVERS[method].adaptive:
        low_order = SOLVERS[method].order <= 2
        kw = dict(rtol=1e-6 if low_order else 1e-9, atol=1e-6 if low_order else 1e-9)
        bound = 1e-4 if low_order else 1e-6
    elif issubclass(SOLVERS[method], AdamsBashforthMoulton):
        # Multistep: the backward solve restarts (RK4) at every output; max_order 12 (AB11) is
        # unstable at this step, AB3/AM4 is not.
        kw = dict(options={"step_size": 1 / 32, "max_order": 4})
        bound = 1e-4
    else:
        kw = dict(options={"step_size": 1 / 32})
        bound = {1: 2e-2, 2: 1e-4, 3: 1e-6, 4: 1e-8, 5: 1e-8, 6: 1e-8}[SOLVERS[method].order]
    g_direct = _grads(func, y0, t, "direct", method=method, **kw)
    sol = solve(func, y0, t, method=method, gradient="adjoint", **kw)
    assert sol.stats.nfe_backward == 0
    g_adj = _flat(torch.autograd.grad(_loss(sol.ys), (y0, *func.parameters())))
    assert _rel(g_adj, g_direct) < bound
    cls = SOLVERS[method]
    if not cls.adaptive and issubclass(cls, RungeKutta):  # same grid backwards: stages x steps
        assert sol.stats.nfe_backward == cls.tableau.stages * sol.stats.n_accepted


def test_fixed_alf_replays_the_grid():
    func = _field()
    y0 = torch.randn(3, 3, dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    sol = solve(func, y0, t, method="alf", options={"step_size": 0.05}, gradient="adjoint")
    sol.ys.sum().backward()
    # per segment: one evaluation for ALF's initial velocity of [z, a, θ̄], then one per step
    assert sol.stats.nfe_backward == sol.stats.n_accepted + 2


def test_stats_and_no_grad():
    func = _field()
    y0 = torch.randn(3, 3, dtype=DT)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    sol = solve(func, y0, t, gradient="adjoint", rtol=1e-6, atol=1e-6)
    assert sol.stats.gradient == "adjoint"
    assert sol.stats.memory_bytes == 3 * y0.numel() * 8 + 8 * len(sol.ts)
    sol.ys[-1].sum().backward()
    assert sol.stats.nfe_backward > 0
    with torch.no_grad():
        ys = odeint(func, y0, t, gradient="adjoint", rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ys, sol.ys.detach(), rtol=0, atol=0)


def test_matches_torchdiffeq_odeint_adjoint():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = _field()
    y0 = torch.randn(4, 3, dtype=DT)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    for adjoint_options in (None, {"norm": "seminorm"}):
        grads = []
        for impl in (odeint_adjoint, torchdiffeq.odeint_adjoint):
            y = y0.clone().requires_grad_()
            ys = impl(func, y, t, rtol=1e-9, atol=1e-9, adjoint_options=adjoint_options)
            grads.append(_flat(torch.autograd.grad(ys.square().sum(), (y, *func.parameters()))))
        assert _rel(grads[0], grads[1]) < 1e-6


def test_seminorm_same_gradient_fewer_backward_evaluations():
    func = _field(dim=4, hidden=64)
    y0 = torch.randn(4, 4, dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=DT)
    ref = _grads(func, y0, t, "direct", **SMOOTH)
    results = {}
    for norm in ("mixed", "seminorm"):
        sol = solve(func, y0, t, rtol=1e-7, atol=1e-7, gradient=Adjoint(options={"norm": norm}))
        g = _flat(torch.autograd.grad(_loss(sol.ys), (y0, *func.parameters())))
        results[norm] = (g, sol.stats.nfe_backward)
    for g, _ in results.values():
        assert _rel(g, ref) < 1e-6
    assert results["seminorm"][1] < results["mixed"][1]


def _gap(func, y0, method: str, n_steps: int) -> float:
    t = torch.tensor([0.0, 1.0], dtype=DT)
    opts = {"step_size": 1.0 / n_steps}
    gs = [_grads(func, y0, t, g, method=method, options=opts) for g in ("direct", "adjoint")]
    return _rel(gs[1], gs[0])


@pytest.mark.parametrize("method", ["euler", "alf"])
def test_anode_counterexample_gradient_gap(method):
    """With few steps the adjoint's gradient is not the gradient of the discrete solve."""
    func = _field(dim=2, hidden=32, scale=2.0)
    y0 = torch.randn(16, 2, dtype=DT, requires_grad=True)
    gaps = [_gap(func, y0, method, n) for n in (1, 4, 64)]
    assert gaps[0] > 1e-2
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-2


def test_double_backward_refused():
    func = _field()
    y0 = torch.randn(2, 3, dtype=DT, requires_grad=True)
    ys = odeint(func, y0, torch.tensor([0.0, 1.0], dtype=DT), gradient="adjoint")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


def test_invalid_configuration():
    with pytest.raises(ValueError, match="valid options are"):
        Adjoint(options={"stepsize": 0.1})
    with pytest.raises(ValueError, match="seminorm"):
        Adjoint(options={"norm": "l2"})
    with pytest.raises(ValueError, match="valid methods"):
        Adjoint(method="rk45")
    with pytest.raises(ValueError, match="rtol"):
        Adjoint(rtol=-1.0)
    func = _field()
    y0 = torch.randn(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="cannot infer `adjoint_options`"):
        odeint_adjoint(
            func, y0, [0.0, 1.0], method="rk4", options={"step_size": 0.1}, adjoint_method="euler"
        )
    # a fixed-grid backward solve without a step size steps on each segment (torchdiffeq)
    y_seg = y0.clone().requires_grad_()
    sol = solve(func, y_seg, [0.0, 1.0], gradient=Adjoint(method="rk4"))
    sol.ys.sum().backward()
    assert sol.stats.nfe_backward == 4
    # a fixed-grid backward solve with its own step size is fine
    y = y0.clone().requires_grad_()
    ys = odeint_adjoint(
        func, y, [0.0, 1.0], adjoint_method="rk4", adjoint_options={"step_size": 0.1}
    )
    ys.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
