"""Implicit and multistep solvers (master's implicit RK, Adams) and solver-specific options."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import torchmali
from torchmali._tree import RHS, Structure
from torchmali.solvers import AdamsBashforthMoulton, ImplicitRungeKutta
from torchmali.solvers.adams import AdamsConvergenceWarning
from torchmali.solvers.implicit import IMPLICIT, ImplicitConvergenceWarning

IMPLICIT_NAMES = sorted(cls.name for cls in IMPLICIT)

# ---------------------------------------------------------------------------------------------
# Stiffness: y' = -1000 (y - cos t), y(0) = 1, h = 0.1 (h λ = -100).


def _stiff(t, y):
    return -1000.0 * (y - torch.cos(t))


def _stiff_exact(t: float) -> float:
    """y(t) = C e^{-1000 t} + (1000² cos t + 1000 sin t) / (1000² + 1), y(0) = 1."""
    k = 1000.0
    particular = (k * k * math.cos(t) + k * math.sin(t)) / (k * k + 1)
    return (1.0 - k * k / (k * k + 1)) * math.exp(-k * t) + particular


def test_explicit_euler_blows_up_on_the_stiff_problem(f64):
    y = torchmali.odeint(
        _stiff, torch.ones(1, dtype=f64), [0.0, 1.0], method="euler", options={"step_size": 0.1}
    )
    assert float(y[-1].abs()) > 1e3  # |1 + h λ| = 99 per step


@pytest.mark.parametrize("method", IMPLICIT_NAMES)
def test_implicit_methods_are_stable_on_the_stiff_problem(method, f64):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImplicitConvergenceWarning)  # and Broyden converges
        ys = torchmali.odeint(
            _stiff,
            torch.ones(1, dtype=f64),
            torch.tensor([0.0, 0.5, 1.0], dtype=f64),
            method=method,
            options={"step_size": 0.1},
        )
    exact = torch.tensor([_stiff_exact(t) for t in (0.0, 0.5, 1.0)], dtype=f64)
    assert float((ys[:, 0] - exact).abs().max()) < 5e-3  # euler: > 1e3


# ---------------------------------------------------------------------------------------------
# The nonlinear solve converges to the implicit stages (closed form for a linear problem).


@pytest.mark.parametrize("method", IMPLICIT_NAMES)
def test_step_solves_the_stage_equations(method, linear):
    """For y' = A y the stages solve (I - h a ⊗ A) k = 1 ⊗ A y0; Broyden's answer is that
    solution to its tolerance."""
    cls = torchmali.SOLVERS[method]
    tab = cls.tableau
    s, n, h = len(tab.c), linear.y0.numel(), 0.1
    a = torch.tensor(tab.a, dtype=linear.y0.dtype)
    A = linear.A
    system = torch.eye(s * n, dtype=A.dtype) - h * torch.kron(a, A)
    k = torch.linalg.solve(system, (A @ linear.y0).repeat(s)).reshape(s, n)
    exact = linear.y0 + h * (torch.tensor(tab.b, dtype=A.dtype) @ k)
    rhs = RHS(linear.f, Structure.of(linear.y0))
    y1 = cls().step(rhs, 0.3, h, linear.y0, None, with_error=False).y1
    assert float((y1 - exact).abs().max()) <= 1e-9


def test_gl4_second_node_is_the_row_sum():
    tab = torchmali.SOLVERS["gl4"].tableau
    assert tab.c[1] == pytest.approx(0.5 + math.sqrt(3) / 6)
    for row, c in zip(tab.a, tab.c, strict=True):
        assert sum(row) == pytest.approx(c)


def test_non_convergence_warns(linear):
    with pytest.warns(ImplicitConvergenceWarning, match=r"max_iters=1.*options\['max_iters'\]"):
        torchmali.odeint(
            linear.f,
            linear.y0,
            [0.0, 0.2],
            method="radauIIA5",
            options={"step_size": 0.1, "max_iters": 1},
        )


def test_implicit_perturb_hints(f64):
    """With perturb, f0 is evaluated just after t0 and the c = 1 stage just before t0 + h."""
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -y

    y0 = torch.ones(1, dtype=f64)
    torchmali.odeint(
        f, y0, [0.0, 0.5], method="implicit_euler", options={"step_size": 0.5, "perturb": True}
    )
    assert seen[0] == math.nextafter(0.0, 1.0)
    assert set(seen[1:]) == {math.nextafter(0.5, 0.0)}
    seen.clear()
    torchmali.odeint(f, y0, [0.0, 0.5], method="implicit_euler", options={"step_size": 0.5})
    assert set(seen) == {0.0, 0.5}


def test_tableau_validation():
    from torchmali.solvers import ImplicitTableau

    with pytest.raises(ValueError, match="row 0 of a must sum to c"):
        ImplicitTableau(c=(0.5,), a=((1.0,),), b=(1.0,))
    with pytest.raises(ValueError, match="lower triangular"):
        ImplicitTableau(c=(1.0, 1.0), a=((0.5, 0.5), (0.5, 0.5)), b=(0.5, 0.5), diagonal=True)
    with pytest.raises(ValueError, match="one entry per stage"):
        ImplicitTableau(c=(1.0,), a=((1.0,),), b=(0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# Adams: the history is the state.


def _adams_rhs(linear):
    return RHS(linear.f, Structure.of(linear.y0))


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_adams_step_is_a_pure_function(method, linear):
    """Replaying a step from (t0, h, y0, state) gives the same result; nothing is kept in the
    solver object, and the state grows by one derivative per step up to max_order - 1."""
    solver = torchmali.SOLVERS[method](max_order=5)
    f = _adams_rhs(linear)
    before = dict(vars(solver))
    y, state, t, h = linear.y0, solver.init(f, 0.0, linear.y0), 0.0, 0.05
    assert state == ()
    lengths = []
    for _ in range(7):
        result = solver.step(f, t, h, y, state, with_error=False)
        again = solver.step(f, t, h, y, state, with_error=False)
        assert torch.equal(result.y1, again.y1)
        assert all(torch.equal(a, b) for a, b in zip(result.state1, again.state1, strict=True))
        assert isinstance(result.state1, tuple) and all(
            isinstance(s, torch.Tensor) for s in result.state1
        )
        lengths.append(len(result.state1))
        y, state, t = result.y1, result.state1, t + h
    assert lengths == [1, 2, 3, 4, 4, 4, 4]
    assert vars(solver) == before


def test_adams_non_convergence_drops_the_oldest_derivative(linear):
    solver = torchmali.SOLVERS["implicit_adams"](max_iters=1)
    f = _adams_rhs(linear)
    y, state, t, h = linear.y0, (), 0.0, 0.2
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AdamsConvergenceWarning)
            result = solver.step(f, t, h, y, state, with_error=False)
        y, state, t = result.y1, result.state1, t + h
    assert len(state) == 2  # the third step corrected once, did not converge, and dropped one
    with pytest.warns(AdamsConvergenceWarning, match=r"did not converge.*max_iters=1"):
        solver.step(f, t, h, y, state, with_error=False)


def test_adams_uses_the_solve_tolerance(linear):
    """The corrector stops when two iterates agree within the solve's rtol/atol."""
    tight = torchmali.solve(
        linear.f,
        linear.y0,
        [0.0, 1.0],
        rtol=1e-12,
        atol=1e-14,
        method="implicit_adams",
        options={"step_size": 0.05, "max_iters": 50},
    )
    loose = torchmali.solve(
        linear.f,
        linear.y0,
        [0.0, 1.0],
        rtol=1e-3,
        atol=1e-3,
        method="implicit_adams",
        options={"step_size": 0.05, "max_iters": 50},
    )
    assert tight.stats.nfe_forward > loose.stats.nfe_forward


# ---------------------------------------------------------------------------------------------
# Solver-specific options.


def test_solver_options_are_parsed_per_method():
    parse = torchmali.Options.parse
    assert dict(parse({}, torchmali.SOLVERS["implicit_adams"]).solver_options) == {
        "max_order": 12,
        "max_iters": 4,
    }
    assert dict(parse({"max_order": 6}, torchmali.SOLVERS["explicit_adams"]).solver_options) == {
        "max_order": 6
    }
    assert dict(parse({}, torchmali.SOLVERS["gl6"]).solver_options) == {"max_iters": 100}
    assert dict(parse({}, torchmali.SOLVERS["scipy_solver"]).solver_options) == {"solver": "LSODA"}
    assert dict(parse({}, torchmali.SOLVERS["dopri5"]).solver_options) == {}


@pytest.mark.parametrize(
    ("method", "options", "error", "match"),
    [
        ("rk4", {"step_size": 0.1, "max_order": 5}, ValueError, r"max_order.*method='rk4'"),
        ("explicit_adams", {"step_size": 0.1, "max_iters": 2}, ValueError, "max_iters"),
        ("implicit_adams", {"step_size": 0.1, "max_order": 13}, ValueError, r"\[1, 12\]"),
        ("implicit_adams", {"step_size": 0.1, "max_order": 4.5}, TypeError, "integer"),
        ("implicit_adams", {"step_size": 0.1, "max_iters": 0}, ValueError, ">= 1"),
        ("gl4", {"step_size": 0.1, "max_iters": -3}, ValueError, ">= 1"),
        ("scipy_solver", {"solver": "rk45"}, ValueError, r"'LSODA'.*'BDF'"),
        ("scipy_solver", {"step_size": 0.1}, ValueError, "no effect with method='scipy_solver'"),
        ("scipy_solver", {"perturb": True}, ValueError, r"\['perturb'\].*scipy_solver"),
        ("euler", {"step_size": 0.1, "perturb": 1}, TypeError, "True or False"),
        ("alf", {"perturb": True}, ValueError, "perturb.*alf"),
    ],
)
def test_bad_solver_options(method, options, error, match, linear):
    with pytest.raises(error, match=match):
        torchmali.odeint(linear.f, linear.y0, [0.0, 1.0], method=method, options=options)


def test_low_max_order_warns_it_is_rk4(linear):
    with pytest.warns(UserWarning, match="reduces to 'rk4'"):
        ys = torchmali.odeint(
            linear.f,
            linear.y0,
            [0.0, 1.0],
            method="explicit_adams",
            options={"step_size": 0.1, "max_order": 3},
        )
    rk4 = torchmali.odeint(
        linear.f, linear.y0, [0.0, 1.0], method="rk4", options={"step_size": 0.1}
    )
    assert torch.equal(ys, rk4)


def test_solver_options_reach_the_solver(linear):
    from torchmali._odeint import _make_solver

    opts = torchmali.Options.parse({"step_size": 0.1, "max_order": 7}, AdamsBashforthMoulton)
    solver = _make_solver("implicit_adams", opts, None)
    assert (solver.max_order, solver.max_iters) == (7, 4)
    opts = torchmali.Options.parse({"step_size": 0.1, "max_iters": 9}, ImplicitRungeKutta)
    assert _make_solver("trbdf2", opts, None).max_iters == 9
