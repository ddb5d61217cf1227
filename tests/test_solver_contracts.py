"""The solver-side contracts every gradient method relies on, with solvers defined here.

* Solver states that are tuples (with ``None`` entries): a two-step Adams–Bashforth carrying the
  previous and the current derivative; every exact method equals direct backprop.
* The reversible-solver contract: a second reversible scheme (two-step leapfrog) makes
  ``gradient="mali"`` exact with no change to MALI; ALF's fast sweep equals the generic sweep
  built on its fused ``backward_step``.
* The pluggable per-step VJP of the checkpoint family (``step_vjp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import torchmali
from torchmali._vjp import vjp
from torchmali.gradients import names, resolve
from torchmali.gradients._replay import autograd_step_vjp
from torchmali.solvers import ALF
from torchmali.solvers.base import BackwardStep, ReverseSweep, ReversibleSolver, Solver, StepResult

EXACT = names(exact=True, memory_efficient=True)


class AB2(Solver):
    """Two-step Adams–Bashforth (constant coefficients); state ``(f_prev, f_cur)``, ``f_prev`` is
    ``None`` before the first step (which is then an Euler step)."""

    name = "ab2_test"
    order = 2

    def init(self, f, t0, y0):
        return (None, f(t0, y0))

    def derivative(self, state):
        return state[1]

    def step(self, f, t0, h, y0, state, with_error=True):
        f_prev, f_cur = state
        slope = f_cur if f_prev is None else 1.5 * f_cur - 0.5 * f_prev
        y1 = torch.add(y0, slope, alpha=h)
        return StepResult(y1=y1, error=None, state1=(f_cur, f(t0 + h, y1)))


class Leapfrog(ReversibleSolver):
    """Two-step leapfrog ``y_{n+1} = y_{n-1} + 2h f(t_n, y_n)`` as a map of ``(y_n, (y_{n-1},))``:
    algebraically reversible with one evaluation per step (a tuple state)."""

    name = "leapfrog_test"
    order = 2

    def init(self, f, t0, y0):
        return (torch.add(y0, f(t0, y0), alpha=-0.05),)

    def step(self, f, t0, h, y0, state, with_error=True):
        return StepResult(y1=torch.add(state[0], f(t0, y0), alpha=2 * h), error=None, state1=(y0,))

    def inverse(self, f, t1, h, y1, state1):
        (y0,) = state1
        return y0, (torch.add(y1, f(t1 - h, y0), alpha=-2 * h),)

    def backward_step(self, f, t0, h, y1, state1, cot_y1, cot_state1, params):
        (y0,) = state1
        with torch.enable_grad():
            y_in = y0.detach().requires_grad_(True)
            u = f(t0, y_in)
        y_prev = torch.add(y1, u.detach(), alpha=-2 * h)
        y_bar, *p_bar = vjp((u,), (y_in, *params), (cot_y1 * (2 * h),))
        if cot_state1 is not None:
            y_bar = y_bar + cot_state1[0]
        return BackwardStep(y0, (y_prev,), y_bar, (cot_y1,), list(p_bar))


@pytest.fixture
def test_solvers(monkeypatch):
    for cls in (AB2, Leapfrog):
        monkeypatch.setitem(torchmali.SOLVERS, cls.name, cls)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3).double()

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) * torch.cos(t) - 0.3 * y


def gradients(gradient, method, t, step=0.1):
    func = Field()
    y0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3).requires_grad_()
    sol = torchmali.solve(
        func, y0, t, method=method, options={"step_size": step}, gradient=gradient
    )
    w = torch.linspace(0.5, 1.5, sol.ys.numel(), dtype=torch.float64).view_as(sol.ys)
    loss = (w * sol.ys**2).sum()
    return sol, torch.autograd.grad(loss, [y0, *func.parameters()])


def rel(got, ref) -> float:
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref, strict=True))


TIMES = [[0.0, 1.0], [0.0, 0.33, 0.8, 1.0], [1.0, 0.45, -0.2]]


@pytest.mark.parametrize("gradient", [*EXACT, torchmali.Binomial(2)], ids=str)
@pytest.mark.parametrize("times", TIMES)
def test_tuple_solver_state_every_exact_method_equals_direct(gradient, times, test_solvers):
    t = torch.tensor(times, dtype=torch.float64)
    if not resolve(gradient).accepts(AB2):  # mali, symplectic: refused with a clear error
        with pytest.raises(ValueError, match="needs"):
            gradients(gradient, "ab2_test", t)
        return
    ref_sol, ref = gradients("direct", "ab2_test", t)
    sol, got = gradients(gradient, "ab2_test", t)
    assert torch.equal(sol.ys, ref_sol.ys)
    assert rel(got, ref) <= 1e-12


@pytest.mark.parametrize("times", TIMES)
def test_a_second_reversible_scheme_makes_mali_exact(times, test_solvers):
    t = torch.tensor(times, dtype=torch.float64)
    _, ref = gradients("direct", "leapfrog_test", t)
    for gradient in ("mali", "reversible", torchmali.Mali(checkpoint_every=3)):
        sol, got = gradients(gradient, "leapfrog_test", t)
        assert rel(got, ref) <= 1e-12
        assert sol.stats.drift < 1e-12
        assert sol.stats.parasitic is None  # the scheme has no consistency check
        assert sol.stats.nfe_backward == sol.stats.n_accepted  # one evaluation per step


def test_leapfrog_inverse_undoes_its_step(test_solvers):
    f = lambda t, y: torch.sin(y) + t  # noqa: E731
    y0 = torch.randn(4, dtype=torch.float64)
    s0 = (torch.randn(4, dtype=torch.float64),)
    r = Leapfrog().step(f, 0.2, 0.1, y0, s0)
    y, s = Leapfrog().inverse(f, 0.3, 0.1, r.y1, r.state1)
    assert torch.allclose(y, y0, rtol=0, atol=1e-15) and torch.allclose(s[0], s0[0], atol=1e-15)


def test_mali_refuses_a_reversible_solver_with_dense_output(monkeypatch, test_solvers):
    monkeypatch.setattr(Leapfrog, "dense_output", True)
    with pytest.raises(ValueError, match="without dense output"):
        gradients("mali", "leapfrog_test", torch.tensor([0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("options", [{"step_size": 0.1}, {"step_size": 0.1, "eta": 0.8}, {}])
def test_alf_fast_sweep_equals_its_generic_backward_step(options, monkeypatch):
    """ALF's recurrence (cotangent of u, alternating sign) against ``backward_step`` per step."""
    func = Field()
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    results = []
    for sweep in (ALF.reverse_sweep, ReversibleSolver.reverse_sweep):
        monkeypatch.setattr(ALF, "reverse_sweep", sweep)
        sol = torchmali.solve(
            func, y0, t, rtol=1e-6, method="alf", options=options, gradient="mali"
        )
        results.append((sol, torch.autograd.grad(sol.ys.square().sum(), [y0, *func.parameters()])))
    (fast, g_fast), (generic, g_generic) = results
    assert rel(g_generic, g_fast) <= 1e-13
    assert fast.stats.nfe_backward == generic.stats.nfe_backward == fast.stats.n_accepted
    assert abs(fast.stats.drift - generic.stats.drift) <= 1e-13
    assert isinstance(ALF().reverse_sweep(func, (), y0, y0), ReverseSweep)


def test_alf_round_off_amplification_of_the_inverse():
    assert ALF().inverse_amplification() == 1.0
    assert ALF(eta=0.75).inverse_amplification() == pytest.approx(2.0)
    assert ALF(eta=0.55).inverse_amplification() == pytest.approx(10.0)


@dataclass(frozen=True)
class EulerVJPCheckpoint(torchmali.Checkpoint):
    """A hand-written per-step VJP for Euler (a stand-in for the symplectic adjoint's)."""

    calls: list = field(default_factory=list, compare=False)

    def step_vjp(self, problem, t0, h, y0, state0, cot_y1, cot_state1, outputs, params):
        self.calls.append(t0)
        cot = cot_y1
        for t_k, c in outputs:
            assert t_k == t0 + h  # every output is a grid point here (see below)
            cot = cot + c
        with torch.enable_grad():
            y_in = y0.detach().requires_grad_(True)
            u = problem.f(t0, y_in)
        y_bar, *p_bar = vjp((u,), (y_in, *params), (cot * h,))
        return cot + y_bar, None, list(p_bar)


@dataclass(frozen=True)
class CountingBinomial(torchmali.Binomial):
    calls: list = field(default_factory=list, compare=False)

    def step_vjp(self, *args):
        self.calls.append(args[1])
        return autograd_step_vjp(*args)


def test_step_vjp_is_pluggable():
    # 0.5 is a grid point of step 0.1 (5 * 0.1 == 0.5 exactly): off-grid outputs of a fixed
    # grid are interpolated inside a step (torchdiffeq), which EulerVJPCheckpoint does not do.
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    _, ref = gradients("direct", "euler", t)
    method = EulerVJPCheckpoint()
    sol, got = gradients(method, "euler", t)
    assert rel(got, ref) <= 1e-13
    assert method.calls == sorted(method.calls, reverse=True)
    assert len(method.calls) == sol.stats.n_accepted
    counting = CountingBinomial(checkpoints=3)
    sol, got = gradients(counting, "euler", t)
    assert rel(got, ref) <= 1e-13
    assert len(counting.calls) == sol.stats.n_accepted


@pytest.mark.parametrize("eta", [1.0, 0.8])
@pytest.mark.parametrize("sweep_class", ["fast", "generic"])
def test_reverse_sweep_hands_a_segment_to_exact_recomputation_and_back(eta, sweep_class):
    """What a safety net does: reverse steps 9..6 with the sweep, 5..3 by exact recomputation
    (``autograd_step_vjp`` from stored states), then restart the sweep with those cotangents."""
    from torchmali._loop import Problem
    from torchmali._options import Options
    from torchmali._tree import RHS, Structure
    from torchmali.step_size import Tolerance

    func = Field()
    params = list(func.parameters())
    y0 = torch.randn(2, 3, dtype=torch.float64)
    f = RHS(func, Structure.of(y0))
    solver = ALF(eta)
    problem = Problem(f, solver, Options.parse({"step_size": 0.1}), Tolerance(1e-6, 1e-6), [0, 1])
    ts = [0.1 * i for i in range(11)]
    points = [(y0, solver.init(f, 0.0, y0))]
    for i in range(10):
        r = solver.step(f, ts[i], ts[i + 1] - ts[i], *points[-1])
        points.append((r.y1, r.state1))
    cot_end = torch.linspace(-1, 1, y0.numel(), dtype=torch.float64).view_as(y0)

    def sweep_from_end():
        if sweep_class == "fast":
            return solver.reverse_sweep(f, params, *points[10])
        return ReverseSweep(solver, f, params, *points[10])

    whole = sweep_from_end()
    for i in range(9, -1, -1):
        whole.step(ts[i], ts[i + 1] - ts[i], cot_end if i == 9 else None)
    split = sweep_from_end()
    for i in range(9, 5, -1):
        split.step(ts[i], ts[i + 1] - ts[i], cot_end if i == 9 else None)
    cot_y, cot_v = split.cotangents()
    grads = [torch.zeros_like(p) for p in params]
    for i in range(5, 2, -1):
        cot_y, cot_v, g = autograd_step_vjp(
            problem, ts[i], ts[i + 1] - ts[i], *points[i], cot_y, cot_v, (), params
        )
        grads = [a + b for a, b in zip(grads, g, strict=True)]
    split.restart(*points[3], cotangents=(cot_y, cot_v))
    for i in range(2, -1, -1):
        split.step(ts[i], ts[i + 1] - ts[i])
    got = [a + b for a, b in zip(split.param_grads, grads, strict=True)]
    assert rel(got, whole.param_grads) <= 1e-12
    assert rel(split.cotangents(), whole.cotangents()) <= 1e-12
