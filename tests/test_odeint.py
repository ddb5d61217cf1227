"""The ``odeint`` / ``solve`` API: shapes, time direction, tuple states, options and statistics."""

from __future__ import annotations

import pytest
import torch

import torchmali
from conftest import ADAPTIVE, ALL_SOLVERS, lotka_volterra, lotka_volterra_reference, make_linear
from torchmali.solvers import ALF, SOLVERS, ReversibleHeun, ReversibleRK, RungeKutta
from torchmali.solvers.reversible_rk import _tableau_of
from torchmali.step_size import rms_norm

# ---------------------------------------------------------------------------------------------
# Shapes, structure, time direction.


@pytest.mark.parametrize("method", ALL_SOLVERS)
def test_odeint_shapes_and_first_output(method, linear):
    y0 = torch.stack([linear.y0, 2 * linear.y0])  # a batch of two states
    t = torch.tensor([0.0, 0.25, 0.5], dtype=linear.y0.dtype)
    options = {} if torchmali.SOLVERS[method].adaptive else {"step_size": 0.05}
    ys = torchmali.odeint(linear.f, y0, t, rtol=1e-5, atol=1e-6, method=method, options=options)
    assert ys.shape == (3, 2, 3) and ys.dtype == y0.dtype
    assert torch.equal(ys[0], y0)
    assert torch.allclose(ys[:, 1], 2 * ys[:, 0], rtol=1e-12, atol=0)


def test_solve_matches_odeint_and_reports_grid(linear):
    t = torch.tensor([0.0, 0.5, 1.0], dtype=linear.y0.dtype)
    sol = torchmali.solve(linear.f, linear.y0, t)
    assert torch.equal(sol.ys, torchmali.odeint(linear.f, linear.y0, t))
    assert sol.ts.dtype == torch.float64
    assert sol.ts[0].item() == 0.0 and sol.ts[-1].item() == 1.0
    assert bool((torch.diff(sol.ts) > 0).all())
    assert sol.stats.method == "dopri5" and sol.stats.gradient == "direct"
    assert sol.stats.n_accepted == len(sol.ts) - 1
    assert torch.allclose(sol.ys, linear.exact(t), rtol=1e-6, atol=1e-7)


def test_t_as_list_and_single_time(linear):
    ys = torchmali.odeint(linear.f, linear.y0, [0.0, 1.0])
    assert torch.allclose(ys[-1], linear.exact(1.0), atol=1e-7)
    one = torchmali.solve(linear.f, linear.y0, [0.3])
    assert one.ys.shape == (1, 3) and torch.equal(one.ys[0], linear.y0)
    assert one.stats.n_accepted == 0


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4", "alf"])
def test_decreasing_time(method, linear):
    """Integrating backwards from y(1) recovers y(t) at decreasing output times."""
    t = torch.tensor([1.0, 0.6, 0.2, -0.3], dtype=linear.y0.dtype)
    y1 = linear.exact(1.0)
    options = {"step_size": 0.01} if method in ("rk4",) else {}
    tol = 1e-9 if method != "alf" else 1e-6
    sol = torchmali.solve(linear.f, y1, t, rtol=tol, atol=tol, method=method, options=options)
    assert bool((torch.diff(sol.ts) < 0).all())
    assert sol.ts[0].item() == 1.0 and sol.ts[-1].item() == -0.3
    expected = linear.exact(t)
    assert torch.allclose(sol.ys, expected, rtol=0, atol=(2e-4 if method == "alf" else 1e-7))


def test_decreasing_fixed_grid_lands(linear):
    t = torch.tensor([1.0, 0.0], dtype=linear.y0.dtype)
    sol = torchmali.solve(linear.f, linear.y0, t, method="rk4", options={"step_size": 0.3})
    assert sol.ts.tolist() == pytest.approx([1.0, 0.7, 0.4, 0.1, 0.0], abs=1e-15)


def _tuple_field(t, y):
    x, (p) = y
    return (x @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=x.dtype), -0.5 * p)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "alf", "heun"])
def test_tuple_state(method, f64):
    x0 = torch.tensor([[1.0, 0.0]], dtype=f64)  # shape (1, 2)
    p0 = torch.ones(3, 1, dtype=f64) * 2  # shape (3, 1)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=f64)
    options = {"step_size": 0.01} if method == "heun" else {}
    tol = 1e-6 if method == "alf" else 1e-8
    xs, ps = torchmali.odeint(
        _tuple_field, (x0, p0), t, rtol=tol, atol=tol, method=method, options=options
    )
    assert xs.shape == (3, 1, 2) and ps.shape == (3, 3, 1)
    tt = t[:, None]
    x_exact = torch.cat([torch.cos(tt), torch.sin(tt)], dim=1)[:, None, :]
    atol = 1e-4 if method in ("alf", "heun") else 1e-6
    assert torch.allclose(xs, x_exact, atol=atol, rtol=0)
    assert torch.allclose(ps, 2 * torch.exp(-0.5 * t)[:, None, None].expand(3, 3, 1), atol=atol)


def test_float32_matches_float64():
    lin32, lin64 = make_linear(torch.float32), make_linear(torch.float64)
    t = [0.0, 0.5, 1.0]
    for method, options in (("dopri5", {}), ("rk4", {"step_size": 0.1}), ("alf", {})):
        y32 = torchmali.odeint(
            lin32.f, lin32.y0, t, rtol=1e-5, atol=1e-6, method=method, options=options
        )
        y64 = torchmali.odeint(
            lin64.f, lin64.y0, t, rtol=1e-5, atol=1e-6, method=method, options=options
        )
        assert y32.dtype == torch.float32
        assert torch.allclose(y32.double(), y64, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Options.


def _decoupled(t, y):
    a, b = y
    rot = torch.tensor([[0.0, 3.0], [-3.0, 0.0]], dtype=a.dtype)
    return a @ rot.T, b @ rot.T


def test_per_tensor_tolerances(f64):
    """Per-tensor atol scales each member's error: b = 1000 a with atol (1e-6, 1e-3) steps like a alone."""
    a0 = torch.tensor([1.0, 0.0], dtype=f64)
    t = torch.tensor([0.0, 2.0], dtype=f64)
    alone = torchmali.solve(lambda t, a: _decoupled(t, (a, a))[0], a0, t, rtol=0.0, atol=1e-6)
    per = torchmali.solve(_decoupled, (a0, 1000 * a0), t, rtol=0.0, atol=(1e-6, 1e-3))
    swapped = torchmali.solve(_decoupled, (a0, 1000 * a0), t, rtol=0.0, atol=(1e-3, 1e-6))
    uniform = torchmali.solve(_decoupled, (a0, 1000 * a0), t, rtol=0.0, atol=1e-6)
    assert per.stats.n_accepted == alone.stats.n_accepted
    assert torch.allclose(per.ts, alone.ts, rtol=1e-9)
    assert uniform.stats.n_accepted > per.stats.n_accepted
    assert swapped.stats.n_accepted > per.stats.n_accepted
    # Equal per-tensor values are the scalar tolerance.
    same = torchmali.solve(_decoupled, (a0, 1000 * a0), t, rtol=(1e-5, 1e-5), atol=(1e-6, 1e-6))
    scalar = torchmali.solve(_decoupled, (a0, 1000 * a0), t, rtol=1e-5, atol=1e-6)
    assert torch.equal(same.ts, scalar.ts)


def test_custom_norm_receives_structure_and_controls_steps(f64):
    seen = []

    def max_norm(err):
        seen.append(err)
        return max(float(e.abs().max()) for e in err)

    a0 = torch.tensor([1.0, 0.0], dtype=f64)
    t = torch.tensor([0.0, 2.0], dtype=f64)
    default = torchmali.solve(_decoupled, (a0, 2 * a0), t, rtol=1e-6, atol=1e-6)
    custom = torchmali.solve(
        _decoupled, (a0, 2 * a0), t, rtol=1e-6, atol=1e-6, options={"norm": max_norm}
    )
    assert seen and all(isinstance(e, tuple) and len(e) == 2 for e in seen)
    assert seen[0][0].shape == (2,)
    assert custom.stats.n_accepted > default.stats.n_accepted  # max >= rms: stricter
    # One call per attempted step (with first_step there is no initial-step selection).
    seen.clear()
    fixed_start = torchmali.solve(
        _decoupled,
        (a0, 2 * a0),
        t,
        rtol=1e-6,
        atol=1e-6,
        options={"norm": max_norm, "first_step": 0.01},
    )
    assert fixed_start.stats.n_accepted + fixed_start.stats.n_rejected == len(seen)


def test_pid_controller_changes_steps_not_accuracy(f64):
    y0 = torch.tensor([1.0, 1.0], dtype=f64)
    ts = [0.0, 1.0, 3.0]
    ref = lotka_volterra_reference([1.0, 1.0], ts)
    t = torch.tensor(ts, dtype=f64)
    counts = set()
    for pid in ({}, {"pcoeff": 0.2, "icoeff": 0.5, "dcoeff": 0.1}, {"pcoeff": 0.1, "icoeff": 0.7}):
        sol = torchmali.solve(lotka_volterra, y0, t, rtol=1e-6, atol=1e-6, options=pid)
        counts.add((sol.stats.n_accepted, sol.stats.n_rejected))
        assert float((sol.ys - ref).abs().max()) < 2e-5
    assert len(counts) == 3


@pytest.mark.parametrize("method", ["dopri5", "alf", "rk4"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_step_t_forces_grid_points(method, direction, linear):
    t = torch.tensor([0.0, 1.0], dtype=linear.y0.dtype) * direction
    step_t = [0.123 * direction, 0.777 * direction, 5.0]  # 5.0 lies outside: ignored
    options = {"step_t": step_t}
    if method == "rk4":
        options["step_size"] = 0.1
    sol = torchmali.solve(
        linear.f, linear.y0, t, rtol=1e-6, atol=1e-6, method=method, options=options
    )
    grid = set(sol.ts.tolist())
    assert {0.123 * direction, 0.777 * direction} <= grid
    assert 5.0 not in grid
    assert torch.allclose(sol.ys[-1], linear.exact(float(t[-1])), atol=1e-4)


def test_first_step_and_max_step(linear):
    t = torch.tensor([0.0, 2.0], dtype=linear.y0.dtype)
    sol = torchmali.solve(linear.f, linear.y0, t, options={"first_step": 1e-3})
    assert sol.ts[1].item() - sol.ts[0].item() == pytest.approx(1e-3, rel=1e-12)
    free = torchmali.solve(linear.f, linear.y0, t, rtol=1e-4, atol=1e-4)
    assert float(torch.diff(free.ts).max()) > 0.2
    capped = torchmali.solve(
        linear.f, linear.y0, t, rtol=1e-4, atol=1e-4, options={"max_step": 0.1}
    )
    assert float(torch.diff(capped.ts).max()) <= 0.1 + 1e-15
    assert capped.stats.n_accepted >= 20


def test_options_object_and_dict_give_the_same_solve(linear):
    t = [0.0, 1.0]
    opts = {"pcoeff": 0.1, "icoeff": 0.8, "max_step": 0.3}
    a = torchmali.solve(linear.f, linear.y0, t, options=opts)
    b = torchmali.solve(linear.f, linear.y0, t, options=torchmali.Options(**opts))
    assert torch.equal(a.ts, b.ts) and torch.equal(a.ys, b.ys)


# ---------------------------------------------------------------------------------------------
# Statistics.


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def _fixed_nfe(cls, n: int) -> int | None:
    """Evaluations of a fixed-grid solve of n steps, from the method's definition (``None``: the
    count is not fixed by the definition — implicit solvers iterate to a tolerance, Adams
    methods bootstrap their history)."""
    if cls is ALF or cls is ReversibleHeun:
        return n + 1  # f at the initial point, then one evaluation per step
    if cls is ReversibleRK:  # two base steps per step; a FSAL base skips its last stage
        tab = _tableau_of(SOLVERS[cls().base])
        return 2 * (tab.stages - tab.fsal) * n
    if issubclass(cls, RungeKutta):
        tab = cls.tableau
        init = 1 if cls.adaptive else 0  # adaptive RK methods evaluate f(t0, y0) up front
        if tab.fsal:
            return init + (tab.stages - 1) * n
        return tab.stages * n
    return None


COUNTED = [m for m in ALL_SOLVERS if _fixed_nfe(torchmali.SOLVERS[m], 10) is not None]
UNCOUNTED = sorted(set(ALL_SOLVERS) - set(COUNTED))


@pytest.mark.parametrize("method", UNCOUNTED)
def test_fixed_grid_statistics_count_every_evaluation(method, linear, recwarn):
    """Where the count has no closed form, the stats still count every call of func."""
    f = Counted(linear.f)
    sol = torchmali.solve(f, linear.y0, [0.0, 1.0], method=method, options={"step_size": 0.1})
    assert sol.stats.n_accepted == 10 and sol.stats.n_rejected == 0
    assert sol.stats.nfe_forward == f.calls >= 10


@pytest.mark.parametrize("method", COUNTED)
def test_fixed_grid_statistics(method, linear):
    cls = torchmali.SOLVERS[method]
    expected = _fixed_nfe(cls, 10)
    f = Counted(linear.f)
    sol = torchmali.solve(f, linear.y0, [0.0, 1.0], method=method, options={"step_size": 0.1})
    assert sol.stats.n_accepted == 10 and sol.stats.n_rejected == 0
    assert sol.stats.nfe_forward == f.calls == expected
    named = {"euler": 10, "midpoint": 20, "heun": 20, "rk4": 40, "alf": 11, "dopri5": 61}
    named |= {"reversible_heun": 11, "reversible_rk": 120}  # dopri5 base: 2 x 6 per step
    if method in named:
        assert expected == named[method]


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_statistics(method, f64):
    cls = torchmali.SOLVERS[method]
    f = Counted(lotka_volterra)
    y0 = torch.tensor([1.0, 1.0], dtype=f64)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=f64)
    sol = torchmali.solve(f, y0, t, rtol=1e-5, atol=1e-5, method=method)
    st = sol.stats
    attempts = st.n_accepted + st.n_rejected
    assert st.nfe_forward == f.calls
    assert st.n_accepted == len(sol.ts) - 1
    assert st.n_rejected >= 0
    if cls is ALF:
        # v0, the initial-step probe, then one evaluation per attempted step.
        assert st.nfe_forward == 2 + attempts
    elif issubclass(cls, RungeKutta) and cls.tableau.fsal:
        # f(t0, y0) (reused as stage 1), the initial-step probe, then (stages - 1) per attempt.
        assert st.nfe_forward == 2 + (cls.tableau.stages - 1) * attempts
    if method == "dopri5":
        assert st.nfe_forward == 6 * attempts + 2
    # With first_step there is no initial-step probe.
    g = Counted(lotka_volterra)
    sol2 = torchmali.solve(
        g, y0, t, rtol=1e-5, atol=1e-5, method=method, options={"first_step": 1e-3}
    )
    assert sol2.stats.nfe_forward == g.calls
    if cls is ALF:
        assert g.calls == 1 + sol2.stats.n_accepted + sol2.stats.n_rejected


def test_rejections_are_counted(f64):
    """A far too large first step is rejected, counted, and the solve still succeeds."""
    y0 = torch.tensor([1.0, 1.0], dtype=f64)
    sol = torchmali.solve(
        lotka_volterra, y0, [0.0, 2.0], rtol=1e-8, atol=1e-8, options={"first_step": 1.5}
    )
    assert sol.stats.n_rejected >= 1
    assert sol.stats.nfe_forward == 1 + 6 * (sol.stats.n_accepted + sol.stats.n_rejected)
    assert float(torch.diff(sol.ts)[0]) < 1.5


def test_stats_as_dict(linear):
    sol = torchmali.solve(linear.f, linear.y0, [0.0, 1.0])
    d = sol.stats.as_dict()
    assert d["nfe_forward"] == sol.stats.nfe_forward > 0
    assert d["method"] == "dopri5"


def test_rms_norm():
    x = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert float(rms_norm(x)) == pytest.approx((12.5) ** 0.5)


# ---------------------------------------------------------------------------------------------
# The loop alone, with a stub solver whose error estimates are scripted.


class _ScriptedSolver(torchmali.solvers.Solver):
    """Euler step whose error estimate (scaled, with rtol = 0, atol = 1) is read from a script."""

    name = "scripted"
    order = 1
    error_order = 1
    adaptive = True
    script: list[float] = []

    def step(self, f, t0, h, y0, state, with_error=True):
        e = self.script.pop(0) if self.script else 0.9
        y1 = y0 + h * f(t0, y0)
        return torchmali.solvers.StepResult(y1=y1, error=torch.full_like(y0, e), state1=None)


def test_loop_with_scripted_errors(monkeypatch, f64):
    monkeypatch.setitem(torchmali.SOLVERS, "scripted", _ScriptedSolver)
    monkeypatch.setattr(_ScriptedSolver, "script", [2.0, 0.5, float("nan"), 0.0, 0.0])
    sol = torchmali.solve(
        lambda t, y: -y,
        torch.ones(3, dtype=f64),
        [0.0, 1.0],
        rtol=0.0,
        atol=1.0,
        method="scripted",
        options={"first_step": 0.1},
    )
    ts = sol.ts.tolist()
    # 0.1 rejected (err 2: factor 0.9/2 = 0.45) -> 0.045 accepted (err 0.5; no growth right after
    # a rejection) -> 0.045 NaN, rejected (shrink by dfactor 0.2) -> 0.009 accepted (err 0, but
    # no growth right after a rejection) -> 0.009 accepted (err 0: grow by ifactor 10) -> 0.09,
    # then err 0.9 (accepted, factor 1) until the last step lands on 1.
    assert ts[:5] == pytest.approx([0.0, 0.045, 0.054, 0.063, 0.153], abs=1e-15)
    assert sol.stats.n_rejected == 2
    assert sol.stats.n_accepted == len(ts) - 1 == 14
    steps = torch.diff(sol.ts)[3:-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.09), rtol=1e-12)
    assert ts[-1] == 1.0
    assert sol.stats.nfe_forward == sol.stats.n_accepted + sol.stats.n_rejected


def test_underflow_long_after_a_nan_is_not_blamed_on_it(monkeypatch, f64):
    """A NaN early on, then errors that shrink the step forever: plain step-size underflow."""
    monkeypatch.setitem(torchmali.SOLVERS, "scripted", _ScriptedSolver)
    monkeypatch.setattr(_ScriptedSolver, "script", [float("nan")] + [1.0] * 1000)
    with pytest.raises(torchmali.SolverError, match="step size underflow") as info:
        torchmali.odeint(
            lambda t, y: -y,
            torch.ones(3, dtype=f64),
            [0.0, 1.0],
            rtol=0.0,
            atol=1.0,
            method="scripted",
            options={"first_step": 0.1},
        )
    # Steps 0.02 * 0.9^k sum to 0.2: the solve stalls just before t = 0.2.
    assert info.value.t == pytest.approx(0.2, abs=1e-12)


def test_float32_output_times_make_no_sliver_steps():
    """0.6 in float32 is ~2e-8 from 60 * 0.01: it replaces that grid point, no 2e-8-long step."""
    t = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    sol = torchmali.solve(
        lambda t, y: -y, torch.ones(2), t, method="alf", options={"step_size": 0.01}
    )
    assert sol.stats.n_accepted == 100
    assert float(torch.diff(sol.ts).min()) > 0.5 * 0.01
    assert torch.equal(sol.ts[torch.isin(sol.ts, t.double())], t.double())
