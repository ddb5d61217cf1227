"""MALI's safety net: the checkpoint interval from the scheme's round-off amplification, the
exact recomputation of drifting segments, and memory budgets (``Mali`` and ``Binomial``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchmali
from torchmali.gradients._safety import budget_interval, drift_interval
from torchmali.gradients.binomial import optimal_recomputations, revolve_cost

F64 = torch.float64
REVERSIBLE = sorted(n for n, c in torchmali.SOLVERS.items() if c.reversible)


class MLP(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        tt = t.expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], -1))))


def solve_grads(gradient, method="alf", options=None, T=5.0, dtype=F64, rtol=1e-5):
    torch.manual_seed(7)
    func = MLP().to(dtype)
    y0 = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    t = torch.tensor([0.0, T / 2, T], dtype=dtype)
    sol = torchmali.solve(func, y0, t, rtol=rtol, atol=1e-7, method=method, options=options,
                          gradient=gradient)  # fmt: skip
    loss = (sol.ys**2).sum() + sol.ys[-1].sum()
    return sol, torch.autograd.grad(loss, [y0, *func.parameters()])


def max_rel(a, b) -> float:
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b, strict=True))


DAMPED = {"step_size": 0.025, "eta": 0.75}  # 200 steps, amplification 2 per inverse step
#: bytes MALI keeps without intermediate points for DAMPED: the final (z, v) and v0 (3 x 96)
#: and 201 step times
FIXED_BYTES = 3 * 96 + 8 * 201
POINT = 192  # one stored (z, v)


def test_drift_interval_follows_amplification_dtype_and_tolerance():
    assert drift_interval(1.0, F64, 1e-4) is None  # undamped: nothing to bound a priori
    assert drift_interval(2.0, F64, None) is None  # drift not checked
    k64, k32 = drift_interval(2.0, F64, 1e-4), drift_interval(2.0, torch.float32, 1e-4)
    assert k64 == 35 and k32 == 6
    assert drift_interval(2.0, F64, 1e-8) < k64 < drift_interval(2.0, F64, 1e-2)
    assert drift_interval(10.0, F64, 1e-4) < k64 < drift_interval(1.001, F64, 1e-4)
    assert budget_interval(200, 3) == 50 and budget_interval(200, 0) is None
    for n, slots in [(200, 3), (201, 4), (7, 6), (100, 1)]:
        k = budget_interval(n, slots)
        assert (n - 1) // k <= slots < (n - 1) // (k - 1) if k > 1 else (n - 1) // k <= slots


@pytest.mark.parametrize("method", REVERSIBLE)
def test_every_reversible_solver_gets_its_interval(method):
    solver = torchmali.SOLVERS[method]()
    sol, _ = solve_grads("mali", method, {"step_size": 0.05}, T=1.0)
    expected = drift_interval(solver.inverse_amplification(), F64, 1e-4)
    n_points = 0 if expected is None else (sol.stats.n_accepted - 1) // expected
    assert sol.stats.checkpoint_interval == (expected if n_points else None)
    assert sol.stats.fallback_segments == 0


@pytest.mark.parametrize("k", [50, None])
def test_a_too_coarse_interval_falls_back_to_exact_recomputation(k):
    """K = 50 lets segments drift to ~1e-1 > drift_tol (2^50 x eps), K = None the whole solve to ~1e43:
    the drifting segments are recomputed exactly and the gradient equals direct."""
    _, ref = solve_grads("direct", options=DAMPED)
    sol, got = solve_grads(torchmali.Mali(checkpoint_every=k), options=DAMPED)
    assert max_rel(got, ref) <= (1e-14 if k is None else 1e-8)
    s = sol.stats
    assert s.fallback_segments >= 1 and s.drift <= 1e-4
    if k is None:  # one segment, stored whole: every step but the last recomputed once
        assert s.fallback_segments == 1 and s.recomputed_steps == s.n_accepted - 1
    # the sweep's evaluation per step; per recomputed segment its steps once more (with graph)
    per_segment = s.n_accepted if k is None else k
    assert s.nfe_backward == s.n_accepted + s.recomputed_steps + s.fallback_segments * per_segment


def test_memory_budget_picks_the_interval_and_stays_within_it():
    generous = FIXED_BYTES + 7 * POINT  # room for 7 points: the drift-safe K = 35 fits (5)
    sol, got = solve_grads(torchmali.Mali(memory_budget=generous), options=DAMPED)
    _, ref = solve_grads("direct", options=DAMPED)
    assert sol.stats.checkpoint_interval == 35
    assert sol.stats.memory_bytes == FIXED_BYTES + 5 * POINT <= generous
    assert max_rel(got, ref) <= 1e-8 and sol.stats.fallback_segments == 0
    tight = FIXED_BYTES + 3 * POINT  # 3 points: K = 50, coarser than safe
    sol, got = solve_grads(torchmali.Mali(memory_budget=tight), options=DAMPED)
    assert sol.stats.checkpoint_interval == 50
    assert sol.stats.memory_bytes == tight
    assert max_rel(got, ref) <= 1e-10  # the drifting segments were recomputed ...
    assert sol.stats.fallback_segments >= 1
    # ... with no free slot: the binomial schedule with one state per segment
    assert sol.stats.recomputed_steps == sol.stats.fallback_segments * revolve_cost(50, 1)
    with pytest.raises(ValueError, match=f"at least {FIXED_BYTES}"):
        solve_grads(torchmali.Mali(memory_budget=FIXED_BYTES - 1), options=DAMPED)


def test_a_fallback_keeps_to_the_budget_free_slots():
    """eta = 1, float32, z' = -5z: no interval (amplification 1), the drift at t0 is large, and
    the whole solve is recomputed with the 4 slots the budget leaves: Griewank's optimum."""
    y0 = torch.ones(3, requires_grad=True)
    t = torch.tensor([0.0, 2.0])
    fixed = 3 * 12 + 8 * 41
    gradient = torchmali.Mali(parasitic_tol=None, memory_budget=fixed + 4 * 24)

    def solve(g):
        return torchmali.solve(lambda t, y: -5.0 * y, y0, t, method="alf",
                               options={"step_size": 0.05}, gradient=g)  # fmt: skip

    (ref,) = torch.autograd.grad(solve("direct").ys[-1].sum(), y0)
    sol = solve(gradient)
    (got,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)
    assert sol.stats.checkpoint_interval is None and sol.stats.memory_bytes == fixed
    assert sol.stats.fallback_segments == 1
    assert sol.stats.recomputed_steps == revolve_cost(40, 5)


def test_adaptive_grid_thins_its_points_to_the_budget():
    options = {"eta": 0.75}
    _, ref = solve_grads("direct", options=options, T=3.0, rtol=1e-7)
    free, _ = solve_grads("mali", options=options, T=3.0, rtol=1e-7)
    n_points = len(range(35, free.stats.n_accepted, 35))
    assert free.stats.checkpoint_interval == 35 and n_points >= 4
    budget = free.stats.memory_bytes - 2 * POINT  # two points fewer than the drift bound wants
    sol, got = solve_grads(torchmali.Mali(memory_budget=budget), options=options, T=3.0, rtol=1e-7)
    assert sol.stats.checkpoint_interval == 70  # thinned once: every other point dropped
    assert sol.stats.memory_bytes <= budget
    assert max_rel(got, ref) <= 1e-10


def test_binomial_memory_budget():
    rk4 = {"step_size": 0.1}  # 30 steps; a state is 4 x 3 float64 (96 bytes), no solver state
    budget = 8 * 31 + 4 * 96 + 50
    _, ref = solve_grads("direct", "rk4", rk4, T=3.0)
    sol, got = solve_grads(torchmali.Binomial(memory_budget=budget), "rk4", rk4, T=3.0)
    assert max_rel(got, ref) <= 1e-12
    assert sol.stats.memory_bytes == 8 * 31 + 4 * 96 <= budget
    assert sol.stats.recomputed_steps == optimal_recomputations(30, 4)
    _, ref = solve_grads("direct", "dopri5", None, T=3.0)
    sol, got = solve_grads(torchmali.Binomial(memory_budget=2000), "dopri5", None, T=3.0)
    assert max_rel(got, ref) <= 1e-12 and sol.stats.memory_bytes <= 2000
    with pytest.raises(ValueError, match=r"at least \d+"):
        solve_grads(torchmali.Binomial(memory_budget=100), "rk4", rk4, T=3.0)
    with pytest.raises(ValueError, match="pass one of them"):
        torchmali.Binomial(checkpoints=3, memory_budget=10**6)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: torchmali.Mali(checkpoint_every="fast"), TypeError, r"'auto' \(the default\)"),
        (lambda: torchmali.Mali(memory_budget=0), ValueError, r"memory_budget=2\*\*20"),
        (lambda: torchmali.Mali(memory_budget="1MB"), TypeError, "memory_budget must be an integer"),
        (lambda: torchmali.Mali(fallback=1), TypeError, "fallback must be True or False"),
        (lambda: torchmali.Binomial(memory_budget=-5), ValueError, "memory_budget must be"),
    ],
)  # fmt: skip
def test_safety_net_arguments_are_validated(make, error, message):
    with pytest.raises(error, match=message):
        make()
