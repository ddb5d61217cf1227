"""Gradients through the new solvers: direct, checkpoint and binomial agree to round-off (float64).

``direct`` differentiates the solver's own operations (Broyden's iterations, the Adams corrector
and the interpolants included); checkpoint / binomial recompute those operations step by step,
so every exact method must give the same gradient. ``scipy_solver`` has no gradient and says so.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchmali
from torchmali.gradients import REGISTRY
from torchmali.solvers.implicit import IMPLICIT

# The methods this branch adds or changes (rk4: the 3/8 rule; the adaptive ones: their
# carried stage and dense output), with the options of a small solve.
NEW = [
    ("dopri8", {}),
    ("fehlberg2", {}),
    ("adaptive_heun", {}),
    ("bosh3", {}),
    ("tsit5", {}),
    ("heun3", {"step_size": 0.1}),
    ("rk4", {"step_size": 0.1}),
    ("explicit_adams", {"step_size": 0.05, "max_order": 6}),
    ("implicit_adams", {"step_size": 0.05}),
    *[(cls.name, {"step_size": 0.1}) for cls in IMPLICIT],
    ("dopri5", {"step_size": 0.1, "perturb": True}),
    ("euler", {"step_size": 0.1, "perturb": True}),
]
EXACT = ["checkpoint", "binomial"]


def _cases():
    for gradient in EXACT:
        for method, options in NEW:
            yield pytest.param(gradient, method, options, id=f"{gradient}-{method}")


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(torch.cat([y, t.expand(*y.shape[:-1], 1)], -1))))


def _grads(method, options, gradient, f64):
    torch.manual_seed(0)
    func = MLP().to(f64)
    y0 = torch.randn(2, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.35, 0.8], dtype=f64)
    if gradient == "binomial":
        gradient = torchmali.Binomial(checkpoints=2)  # forces recomputed segments
    sol = torchmali.solve(
        func, y0, t, rtol=1e-6, atol=1e-8, method=method, options=options, gradient=gradient
    )
    loss = (sol.ys**2).sum() + sol.ys[1].sum()
    return sol, torch.autograd.grad(loss, (y0, *func.parameters()))


@pytest.mark.parametrize(("gradient", "method", "options"), list(_cases()))
def test_exact_gradients_equal_direct(gradient, method, options, f64):
    ref_sol, ref = _grads(method, options, "direct", f64)
    sol, got = _grads(method, options, gradient, f64)
    assert torch.equal(sol.ts, ref_sol.ts)
    assert torch.allclose(sol.ys, ref_sol.ys, rtol=0, atol=1e-13)
    worst = max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref, strict=True))
    assert worst <= 1e-12
    assert sol.stats.nfe_backward > 0


@pytest.mark.parametrize("method", ["dopri8", "fehlberg2"])
def test_gradcheck_adaptive(method, f64):
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(2, generator=g, dtype=f64).requires_grad_()
    W = (0.7 * torch.randn(2, 2, generator=g, dtype=f64)).requires_grad_()
    t = torch.tensor([0.0, 0.4, 0.8], dtype=f64)
    tol = 1e-10 if method == "dopri8" else 1e-9  # the grid moves under FD perturbations

    def run(y0, W):
        return torchmali.odeint(
            lambda t, y: torch.tanh(y @ W.T) + 0.2 * t * y, y0, t, rtol=tol, atol=tol, method=method
        )

    assert torch.autograd.gradcheck(run, (y0, W), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# scipy_solver: forward only, never silently detached.


def test_scipy_forward_without_grad_is_plain(linear):
    sol = torchmali.solve(linear.f, linear.y0, [0.0, 0.5, 1.0], method="scipy_solver")
    assert not sol.ys.requires_grad
    assert torch.allclose(sol.ys, linear.exact([0.0, 0.5, 1.0]), rtol=0, atol=1e-6)
    assert sol.stats.nfe_forward > 0 and sol.stats.n_accepted == len(sol.ts) - 1 > 1
    assert sol.ts[0].item() == 0.0 and sol.ts[-1].item() == 1.0


def test_scipy_tuple_state_and_decreasing_time(f64):
    def f(t, state):
        x, v = state
        return v, -x

    x0, v0 = torch.tensor([1.0], dtype=f64), torch.tensor([0.0], dtype=f64)
    t = torch.tensor([0.0, -0.5, -1.0], dtype=f64)
    xs, vs = torchmali.odeint(f, (x0, v0), t, rtol=1e-9, atol=1e-10, method="scipy_solver")
    assert xs.shape == (3, 1) and vs.shape == (3, 1)
    assert torch.allclose(xs[:, 0], torch.cos(t), atol=1e-7)
    assert torch.allclose(vs[:, 0], -torch.sin(t), atol=1e-7)


def _needs_grad_cases(f64):
    w = torch.tensor(-0.5, dtype=f64, requires_grad=True)
    lin = nn.Linear(2, 2).to(f64)
    y0 = torch.ones(2, dtype=f64)
    t = torch.tensor([0.0, 1.0], dtype=f64)
    return {
        "y0": (lambda t, y: -y, y0.clone().requires_grad_(), t),
        "closure": (lambda t, y: w * y, y0, t),
        "module": (lambda t, y: lin(y), y0, t),  # a closure over a module
        "bound module": (_Field().to(f64), y0, t),
        "time": (lambda t, y: -y, y0, t.clone().requires_grad_()),
    }


class _Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(-0.3))

    def forward(self, t, y):
        return self.a * y


@pytest.mark.parametrize("case", ["y0", "closure", "module", "bound module", "time"])
def test_scipy_backward_raises(case, f64):
    func, y0, t = _needs_grad_cases(f64)[case]
    ys = torchmali.odeint(func, y0, t, method="scipy_solver")
    assert ys.requires_grad  # connected, not silently detached
    with pytest.raises(RuntimeError, match=r"scipy_solver.*no gradient.*dopri5"):
        ys.sum().backward()


@pytest.mark.parametrize("gradient", sorted(set(REGISTRY) - {"direct", "backprop"}))
def test_scipy_refuses_gradient_methods(gradient, linear):
    with pytest.raises(ValueError, match="scipy_solver|method='alf'"):
        torchmali.odeint(linear.f, linear.y0, [0.0, 1.0], method="scipy_solver", gradient=gradient)
    with pytest.raises(ValueError, match="scipy_solver"):
        torchmali.odeint_adjoint(linear.f, linear.y0, [0.0, 1.0], method="scipy_solver")


def test_scipy_failure_is_a_solver_error(f64):
    def blows_up(t, y):
        return y**3

    with pytest.raises(torchmali.SolverError, match=r"solve_ivp\(method='RK45'\) failed"):
        torchmali.odeint(
            blows_up,
            torch.ones(1, dtype=f64),
            [0.0, 2.0],
            method="scipy_solver",
            options={"solver": "RK45"},
        )
