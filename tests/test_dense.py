"""``odeint_dense``: one solve, the solution at any time of its interval, differentiable."""

from __future__ import annotations

import pytest
import torch

import torchmali
from torchmali.gradients import REGISTRY

DT = torch.float64
EXACT = sorted({cls.name for cls in REGISTRY.values()} - {"adjoint", "mali", "direct"})


class Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.W = torch.nn.Parameter(torch.randn(2, 2, generator=g, dtype=DT))

    def forward(self, t, y):
        return torch.tanh(y @ self.W.T) - 0.2 * t * y


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_matches_odeint_at_the_same_times(direction):
    """Dense output does not change the steps, so dense(t) is odeint's output at t exactly."""
    f = Field()
    y0 = torch.tensor([0.5, -1.0], dtype=DT)
    dense = torchmali.odeint_dense(f, y0, 0.0, 2.0 * direction)
    times = torch.tensor([0.0, 0.3, 1.1, 1.7, 2.0], dtype=DT) * direction
    ys = torchmali.odeint(f, y0, times)
    assert torch.equal(dense(times), ys)
    assert torch.equal(dense(times[2]), ys[2]) and dense(float(times[1])).shape == (2,)
    assert dense.ts[0] == 0.0 and dense.ts[-1] == 2.0 * direction


class BitField(Field):
    """``Field`` modulated by the last bits of ``t`` (by 1e-9): a replay that evaluated a step's
    end stages at another ``t`` than the adaptive solve (one ulp apart) shows in the values."""

    def forward(self, t, y):
        return super().forward(t, y) * (1.0 + 1e-9 * torch.frac(t * 2.0**45))


@pytest.mark.parametrize("field", [Field, BitField])
@pytest.mark.parametrize("gradient", EXACT)
def test_differentiable_with_every_exact_method(gradient, field):
    """Other methods replay the accepted grid as the adaptive solve stepped it: the values are
    direct's bit for bit, the gradients to round-off."""
    grads = {}
    for g in ("direct", gradient):
        f = field()
        y0 = torch.tensor([0.5, -1.0], dtype=DT, requires_grad=True)
        dense = torchmali.odeint_dense(f, y0, 0.0, 2.0, gradient=g)
        ys = dense(torch.tensor([0.4, 1.3], dtype=DT))
        grads[g] = (ys.detach(), torch.autograd.grad(ys.square().sum(), (y0, f.W)))
    (ys_a, ga), (ys_b, gb) = grads.values()
    assert torch.equal(ys_a, ys_b)
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_fixed_grid_and_tuple_states():
    y0 = (torch.tensor(1.0, dtype=DT), torch.tensor([0.0, 0.5], dtype=DT))

    def f(t, y):
        return -y[0], y[1] * 0.1 + y[0]

    dense = torchmali.odeint_dense(f, y0, 0.0, 1.0, method="rk4", options={"step_size": 0.1})
    x, v = dense(torch.tensor([0.25, 1.0], dtype=DT))
    xs, vs = torchmali.odeint(f, y0, [0.0, 0.25, 1.0], method="rk4", options={"step_size": 0.1})
    assert torch.equal(x, xs[1:]) and torch.equal(v, vs[1:])


def test_against_torchdiffeq():
    tde = pytest.importorskip("torchdiffeq")
    f = Field().requires_grad_(False)
    y0 = torch.tensor([0.5, -1.0], dtype=DT)
    t0, t1 = torch.tensor(0.0, dtype=DT), torch.tensor(2.0, dtype=DT)
    ours = torchmali.odeint_dense(f, y0, t0, t1, rtol=1e-10, atol=1e-10)
    theirs = tde.odeint_dense(f, y0, t0, t1, rtol=1e-10, atol=1e-10)
    for t in (0.1, 0.77, 1.5):
        tt = torch.tensor(t, dtype=DT)
        assert torch.allclose(ours(tt), theirs(tt), atol=1e-8, rtol=0)


def test_errors():
    f, y0 = Field(), torch.ones(2, dtype=DT)
    landing = [n for n, c in torchmali.SOLVERS.items() if c.adaptive and not c.dense_output]
    assert "alf" in landing
    for method in landing:
        if torchmali.SOLVERS[method].forward_only:
            continue
        with pytest.raises(ValueError, match="dense output"):
            torchmali.odeint_dense(f, y0, 0.0, 1.0, method=method)
    dense = torchmali.odeint_dense(f, y0, 0.0, 1.0)
    with pytest.raises(ValueError, match="outside the solved interval"):
        dense(1.5)
    with pytest.raises(ValueError, match="0-dim or 1-D"):
        dense(torch.zeros(2, 2, dtype=DT))


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "alf"])
@pytest.mark.parametrize("field", [Field, BitField])
def test_solve_on_grid_replays_an_adaptive_solve_bit_for_bit(method, field):
    """``solve_on_grid`` (the bench's same-grid reference) steps the accepted grid as the adaptive
    solve did: the same values (outputs inside steps interpolated as before), and another
    gradient method's gradient of that same discrete solve."""
    from torchmali._odeint import solve_on_grid

    y0 = torch.tensor([0.5, -1.0], dtype=DT)
    t = torch.tensor([0.0, 0.7, 1.3, 2.0], dtype=DT)
    with torch.no_grad():
        sol = torchmali.solve(field(), y0, t, rtol=1e-6, atol=1e-8, method=method)
        again = solve_on_grid(field(), y0, t, sol.ts, 1e-6, 1e-8, method)
    assert torch.equal(again.ys, sol.ys) and torch.equal(again.ts, sol.ts)
    assert again.stats.n_accepted == sol.stats.n_accepted and again.stats.n_rejected == 0
    f, g = field(), field()
    direct = torchmali.solve(f, y0, t, rtol=1e-6, atol=1e-8, method=method)
    gradient = "mali" if method == "alf" else "checkpoint"
    replay = solve_on_grid(g, y0, t, direct.ts, 1e-6, 1e-8, method, gradient=gradient)
    (a,) = torch.autograd.grad(direct.ys.square().sum(), f.W)
    (b,) = torch.autograd.grad(replay.ys.square().sum(), g.W)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="accepted grid"):
        solve_on_grid(field(), y0, t, sol.ts[1:], 1e-6, 1e-8, method)
