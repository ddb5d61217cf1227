"""Reversible Heun and the McCallum–Foster reversible wrapper: inverse, order, stability facts,
the fused backward pass against the step-by-step one, and configurations of the wrapper beyond
its defaults (registered here as test variants whose option defaults are the configuration;
``options={"base": ..., "coupling": ...}`` reaches the same solver, tested below)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import torchmali
from conftest import fitted_order, make_linear
from torchmali._state import leaves
from torchmali._vjp import vjp
from torchmali.gradients._replay import autograd_step_vjp
from torchmali.solvers import ReversibleHeun, ReversibleRK
from torchmali.solvers.base import ReverseSweep, ReversibleSolver

F64 = torch.float64


def variant(base: str, coupling: float) -> type[ReversibleRK]:
    """``reversible_rk`` with another base and coupling as its option defaults, as a registry
    entry."""
    opts = ReversibleRK.solver_options

    class Variant(ReversibleRK):
        name = f"reversible_{base}_{coupling:g}"
        solver_options = {
            "base": dataclasses.replace(opts["base"], default=base),
            "coupling": dataclasses.replace(opts["coupling"], default=coupling),
        }

    return Variant


VARIANTS = [variant("rk4", 0.999), variant("bosh3", 0.9), variant("euler", 1.0),
            variant("midpoint", 0.5)]  # fmt: skip


@pytest.fixture
def variants(monkeypatch):
    for cls in VARIANTS:
        monkeypatch.setitem(torchmali.SOLVERS, cls.name, cls)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3).double()

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) * torch.cos(t) - 0.3 * y


def gradients(gradient, method, times, options):
    func = Field()
    y0 = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3).requires_grad_()
    t = torch.tensor(times, dtype=F64)
    sol = torchmali.solve(func, y0, t, method=method, options=options, gradient=gradient,
                          rtol=1e-6, atol=1e-8)  # fmt: skip
    w = torch.linspace(0.5, 1.5, sol.ys.numel(), dtype=F64).view_as(sol.ys)
    return sol, torch.autograd.grad((w * sol.ys**2).sum(), [y0, *func.parameters()])


def rel(got, ref) -> float:
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref, strict=True))


SOLVERS = [ReversibleHeun(), ReversibleRK()] + [cls() for cls in VARIANTS]


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_inverse_undoes_the_step(solver):
    f = lambda t, y: torch.sin(y) * (1 + t) - 0.5 * y  # noqa: E731
    y0 = torch.randn(5, dtype=F64)
    state = solver.init(f, 0.2, y0)
    for h in (0.1, -0.07):
        r = solver.step(f, 0.2, h, y0, state, with_error=False)
        y, s = solver.inverse(f, 0.2 + h, h, r.y1, r.state1)
        assert torch.allclose(y, y0, rtol=0, atol=1e-14)
        for a, b in zip(leaves(s), leaves(state), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "method", ["reversible_heun", "reversible_rk", *(c.name for c in VARIANTS)]
)
@pytest.mark.parametrize("times", [[0.0, 1.0], [0.0, 0.33, 0.8, 1.0], [1.0, 0.45, -0.2]])
def test_mali_equals_direct_for_every_configuration(method, times, variants):
    fixed = {"step_size": 0.1}
    configs = [fixed] + ([None] if torchmali.SOLVERS[method]().adaptive else [])
    for options in configs:
        ref_sol, ref = gradients("direct", method, times, options)
        sol, got = gradients("mali", method, times, options)
        assert torch.equal(sol.ys, ref_sol.ys)
        assert rel(got, ref) <= 1e-12
        assert sol.stats.drift < 1e-10 and sol.stats.fallback_segments == 0


def test_reversible_heun_sweep_equals_its_step_by_step_backward(monkeypatch):
    """The fused sweep (one evaluation with graph per step, reused as the next step's VJP graph)
    against ``backward_step`` applied step by step (two evaluations per step)."""
    results = []
    for sweep in (ReversibleHeun.reverse_sweep, ReversibleSolver.reverse_sweep):
        monkeypatch.setattr(ReversibleHeun, "reverse_sweep", sweep)
        for options in ({"step_size": 0.1}, None):
            results.append(gradients("mali", "reversible_heun", [0.0, 0.4, 1.0], options))
    (fast, g_fast), (fast_ad, g_fast_ad), (gen, g_gen), (gen_ad, g_gen_ad) = results
    assert rel(g_gen, g_fast) <= 1e-13 and rel(g_gen_ad, g_fast_ad) <= 1e-13
    for f, g in ((fast, gen), (fast_ad, gen_ad)):
        n = f.stats.n_accepted
        # one per step and one at the final point, less the one at t0: the stored initial
        # state holds f(t0, y0)
        assert f.stats.nfe_backward == n
        assert g.stats.nfe_backward == 2 * n


@pytest.mark.parametrize("solver", [ReversibleHeun(), ReversibleRK(base="rk4")], ids=repr)
@pytest.mark.parametrize("sweep_class", ["own", "generic"])
def test_a_sweep_hands_a_segment_to_exact_recomputation_and_back(solver, sweep_class):
    """The safety net's hand-off: reverse steps 9..6 with the sweep, 5..3 by exact
    recomputation from stored points, then restart the sweep with those cotangents."""
    from torchmali._loop import Problem
    from torchmali._options import Options
    from torchmali._tree import RHS, Structure
    from torchmali.step_size import Tolerance

    func = Field()
    params = list(func.parameters())
    y0 = torch.randn(2, 3, dtype=F64)
    f = RHS(func, Structure.of(y0))
    problem = Problem(f, solver, Options.parse({"step_size": 0.1}), Tolerance(1e-6, 1e-6), [0, 1])
    ts = [0.1 * i for i in range(11)]
    points = [(y0, solver.init(f, 0.0, y0))]
    for i in range(10):
        r = solver.step(f, ts[i], ts[i + 1] - ts[i], *points[-1], with_error=False)
        points.append((r.y1, r.state1))
    cot_end = torch.linspace(-1, 1, y0.numel(), dtype=F64).view_as(y0)

    def sweep():
        if sweep_class == "own":
            return solver.reverse_sweep(f, params, *points[10])
        return ReverseSweep(solver, f, params, *points[10])

    whole = sweep()
    for i in range(9, -1, -1):
        whole.step(ts[i], ts[i + 1] - ts[i], cot_end if i == 9 else None)
    split = sweep()
    for i in range(9, 5, -1):
        split.step(ts[i], ts[i + 1] - ts[i], cot_end if i == 9 else None)
    cot_y, cot_s = split.cotangents()
    grads = [torch.zeros_like(p) for p in params]
    for i in range(5, 2, -1):
        cot_y, cot_s, g = autograd_step_vjp(
            problem, ts[i], ts[i + 1] - ts[i], *points[i], cot_y, cot_s, (), params
        )
        grads = [a + b for a, b in zip(grads, g, strict=True)]
    split.restart(*points[3], cotangents=(cot_y, cot_s))
    for i in range(2, -1, -1):
        split.step(ts[i], ts[i + 1] - ts[i])
    got = [a + b for a, b in zip(split.param_grads, grads, strict=True)]
    assert rel(got, whole.param_grads) <= 1e-12
    (wy, ws), (sy, ss) = whole.cotangents(), split.cotangents()
    assert rel([sy, *leaves(ss)], [wy, *leaves(ws)]) <= 1e-12


@pytest.mark.parametrize(
    "method, expected", [("reversible_heun", 2), ("reversible_rk", 5),
                         (VARIANTS[0].name, 4), (VARIANTS[3].name, 2)],
)  # fmt: skip
def test_order_of_convergence(method, expected, variants):
    lin = make_linear(F64)
    exact = lin.exact(1.0)
    hs = [0.1, 0.05, 0.025] if expected < 5 else [0.2, 0.1, 0.05]
    errors = []
    for h in hs:
        ys = torchmali.odeint(lin.f, lin.y0, torch.tensor([0.0, 1.0], dtype=F64), method=method,
                              options={"step_size": h})  # fmt: skip
        errors.append(float((ys[-1] - exact).norm()))
    assert abs(fitted_order(hs, errors) - expected) < 0.3


def one_step_map(solver, z: complex, h: float = 0.1) -> torch.Tensor:
    """The 2x2 matrix of one step on ``y' = λy`` with ``hλ = z`` (acting on ``(y, aux)``)."""
    lam = z / h
    f = lambda t, y: lam * y  # noqa: E731
    cols = []
    for e in ([1.0, 0.0], [0.0, 1.0]):
        y, aux = (
            torch.tensor([e[0]], dtype=torch.complex128),
            torch.tensor([e[1]], dtype=torch.complex128),
        )
        state = (aux, lam * aux) if isinstance(solver, ReversibleHeun) else aux
        r = solver.step(f, 0.0, h, y, state, with_error=False)
        aux1 = r.state1[0] if isinstance(solver, ReversibleHeun) else r.state1
        cols.append(torch.cat([r.y1, aux1]))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("z", [-0.5, 0.3j, -0.2 + 0.4j])
def test_determinant_of_the_one_step_map(z):
    """Reversible Heun: -1 (as ALF with eta=1); the wrapper: its coupling, for any base."""
    det = torch.linalg.det(one_step_map(ReversibleHeun(), z))
    assert abs(complex(det) + 1) < 1e-12
    for solver in (ReversibleRK(), ReversibleRK(base="rk4", coupling=0.9)):
        det = torch.linalg.det(one_step_map(solver, z))
        assert abs(complex(det) - solver.coupling) < 1e-12


def test_stability_facts():
    """The wrapper at coupling 0.999 is unstable on the negative real axis beyond |hλ| ~ 1e-3;
    reversible Heun is stable on the imaginary segment only."""
    radius = lambda s, z: float(torch.linalg.eigvals(one_step_map(s, z)).abs().max())  # noqa: E731
    wrapper = ReversibleRK()
    assert radius(wrapper, -5e-4) <= 1.0 < radius(wrapper, -5e-3)
    heun = ReversibleHeun()
    assert abs(radius(heun, 0.9j) - 1.0) < 1e-12 and radius(heun, -0.1) > 1.0
    assert ReversibleHeun().inverse_amplification() == 1.0
    assert ReversibleRK(coupling=0.8).inverse_amplification() == pytest.approx(1.25)


def test_wrapper_options_and_messages():
    assert set(ReversibleRK.solver_options) == {"base", "coupling"}
    for opt in ReversibleRK.solver_options.values():  # the solvers branch's SolverOption fields
        assert opt.check("x", opt.default) == opt.default and opt.doc
    with pytest.raises(ValueError, match=r"one of \[.*'dopri5'.*\]"):
        ReversibleRK(base="alf")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        ReversibleRK(coupling=0.0)
    with pytest.raises(TypeError, match="must be a number"):
        ReversibleRK(coupling="0.9")
    with pytest.raises(ValueError, match="has no error estimate"):
        ReversibleRK(base="rk4").step(lambda t, y: -y, 0.0, 0.1, torch.ones(2), torch.ones(2))
    assert repr(ReversibleRK()) == "ReversibleRK(base='dopri5', coupling=0.999)"


def test_two_track_consistency_check_reports_the_parasitic_mode():
    """z' = -z, T = 20, h = 0.05: reversible Heun blows up like ALF (|y_N - ŷ_N| ≫ |y_N|), the
    wrapper drifts away from the ODE (y_N = 0.014 instead of 2e-9); both are flagged, warned
    about, and their gradients recomputed exactly."""
    y0 = torch.ones(1, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 20.0], dtype=F64)
    for method, low in (("reversible_heun", 100.0), ("reversible_rk", 1.0)):
        kw = dict(method=method, options={"step_size": 0.05})
        (ref,) = torch.autograd.grad(torchmali.odeint(lambda t, y: -y, y0, t, **kw)[-1].sum(), y0)
        sol = torchmali.solve(lambda t, y: -y, y0, t, gradient="mali", **kw)
        assert abs(float(sol.ys[-1].detach())) > 1e-3
        with pytest.warns(torchmali.ReconstructionDriftWarning, match="parasitic_tol"):
            (got,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
        assert sol.stats.parasitic > low and sol.stats.fallback_segments == 1
        assert torch.allclose(got, ref, rtol=1e-5, atol=0)


def test_wrapper_instability_below_drift_tol_is_caught_by_its_consistency_check():
    """A dissipative affine field (eigenvalues of real part near -1), T = 10, h = 0.1: the
    default coupling 0.999 is unstable (|h λ| > -ln 0.999) and the two tracks part by ~1e-2
    while the reconstruction drift stays below drift_tol. The wrapper's consistency limit
    (max(1e-3, 10 T h^5) here; healthy solves measure < 1e-5) flags it: a warning, and the
    gradient recomputed exactly. (In float32 the bench measured MALI 4e-3 off float32 direct
    with no warning before.)"""
    g = torch.Generator().manual_seed(0)
    A = -torch.eye(16, dtype=F64) + 0.3 * torch.randn(16, 16, generator=g, dtype=F64) / 4
    y0 = torch.randn(8, 16, generator=g, dtype=F64).requires_grad_()
    W = A.clone().requires_grad_()
    t = torch.tensor([0.0, 10.0], dtype=F64)
    kw = dict(method="reversible_rk", options={"step_size": 0.1}, params=[W])
    ys = torchmali.odeint(lambda t, y: y @ W.T, y0, t, **kw)
    ref = torch.autograd.grad(ys[-1].square().sum(), [y0, W])
    for fallback in (True, False):
        gradient = torchmali.Mali(fallback=fallback)
        sol = torchmali.solve(lambda t, y: y @ W.T, y0, t, gradient=gradient, **kw)
        with pytest.warns(torchmali.ReconstructionDriftWarning, match="parasitic_tol=0.001"):
            got = torch.autograd.grad(sol.ys[-1].square().sum(), [y0, W])
        assert sol.stats.parasitic > 1e-3 and sol.stats.drift < 1e-4
        if fallback:
            assert sol.stats.fallback_segments >= 1
            # round-off, amplified by the unstable scheme's own backward pass (direct's too)
            assert rel(got, ref) < 1e-7
    # the warning is warranted: the forward solution is far from the ODE's (matrix exponential)
    exact = y0.detach() @ torch.linalg.matrix_exp(10.0 * A).T
    assert float((ys[-1].detach() - exact).norm() / exact.norm()) > 1e-3
    # a healthy solve of the same size stays far below the limit
    rot = torch.randn(16, 16, generator=g, dtype=F64)
    healthy = torchmali.solve(
        lambda t, y: y @ (rot - rot.T).T,
        y0.detach().requires_grad_(),
        t,
        gradient="mali",
        method="reversible_rk",
        options={"step_size": 0.1},
    )
    healthy.ys[-1].square().sum().backward()
    assert healthy.stats.parasitic < 1e-4 and healthy.stats.fallback_segments == 0


def test_reversible_heun_vjp_formula():
    """The pulled-back cotangents of one step against autograd through ``step``."""
    solver, f = ReversibleHeun(), Field()
    y0 = torch.randn(2, 3, dtype=F64)
    s0 = (torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64))
    cots = [torch.randn(2, 3, dtype=F64) for _ in range(3)]
    with torch.enable_grad():
        ins = [x.clone().requires_grad_() for x in (y0, *s0)]
        r = solver.step(lambda t, y: f(torch.tensor(t, dtype=F64), y), 0.0, 0.1, ins[0],
                        (ins[1], ins[2]), with_error=False)  # fmt: skip
    ref = vjp((r.y1, *r.state1), ins, cots)
    b = solver.backward_step(
        lambda t, y: f(torch.tensor(t, dtype=F64), y),
        0.0,
        0.1,
        r.y1.detach(),
        tuple(x.detach() for x in r.state1),
        cots[0],
        (cots[1], cots[2]),
        [],
    )
    assert rel([b.cot_y0, *b.cot_state0], list(ref)) <= 1e-13


def test_adaptive_wrapper_controls_its_parasitic_mode():
    """Coupling 0.999 is unstable on y' = -5y at any step dopri5 would take: the base steps'
    estimates alone accepted 27 steps and returned a 6e-4 relative error at rtol=1e-6 (600x
    the tolerance). The gap y - z enters the error estimate, so the controller shrinks the
    steps to the scheme's stable range: accurate, at the honest cost of ~100x more steps."""
    A = torch.tensor([[-5.0, 1.0], [0.0, -0.5]], dtype=F64)
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    t = torch.tensor([0.0, 1.5], dtype=F64)
    exact = torch.linalg.matrix_exp(A * 1.5) @ y0
    runs = {m: torchmali.solve(lambda t, y: y @ A.T, y0, t, rtol=1e-6, atol=1e-8, method=m)
            for m in ("dopri5", "reversible_rk")}  # fmt: skip
    err = float((runs["reversible_rk"].ys[-1] - exact).norm() / exact.norm())
    assert err <= 2e-5
    assert runs["reversible_rk"].stats.n_accepted > 10 * runs["dopri5"].stats.n_accepted


@pytest.mark.parametrize(
    "method, per_step, init",
    [("reversible_heun", 1, 1), ("reversible_rk", 12, 0), (VARIANTS[0].name, 8, 0)],
)
def test_fixed_grid_evaluation_counts(method, per_step, init, variants):
    """Reversible Heun: f(t0, y0) then one per step; the wrapper: two base steps (dopri5 skips
    its first-same-as-last stage on a fixed grid: 2 x 6; rk4: 2 x 4), nothing up front."""
    lin = make_linear(F64)
    sol = torchmali.solve(lin.f, lin.y0, [0.0, 1.0], method=method, options={"step_size": 0.1})
    assert sol.stats.n_accepted == 10
    assert sol.stats.nfe_forward == init + per_step * 10


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.name)
def test_options_select_the_base_and_coupling(cls, variants):
    """``method="reversible_rk", options={"base": b, "coupling": c}`` is the same solver as the
    registered variant: the same solution and the same gradient, bit for bit."""
    solver = cls()
    fixed = {"step_size": 0.1}
    opts = {**fixed, "base": solver.base, "coupling": solver.coupling}
    sol_a, g_a = gradients("mali", cls.name, [0.0, 0.7, 1.0], fixed)
    sol_b, g_b = gradients("mali", "reversible_rk", [0.0, 0.7, 1.0], opts)
    assert torch.equal(sol_a.ys, sol_b.ys)
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b, strict=True))
