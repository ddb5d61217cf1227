"""Events: ``odeint(..., event_fn=)`` and ``odeint_event``, against analytic event times, finite
differences (float64, central) and torchdiffeq, with every gradient method."""

from __future__ import annotations

import math

import pytest
import torch

import torchmali
from torchmali.gradients import REGISTRY

DT = torch.float64
# the asserts read differentiable tensors with float()
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
GRADIENTS = sorted({cls.name for cls in REGISTRY.values()})


def _setup(gradient: str) -> dict:
    if gradient == "mali":  # ALF is exact on the ball's quadratic trajectory with a fixed step
        return {"method": "alf", "options": {"step_size": 0.05}, "atol": 1e-12}
    return {"rtol": 1e-10, "atol": 1e-12}


class Ball(torch.nn.Module):
    """Free fall ``x' = v, v' = -g``; the event is ``x = 0``."""

    def __init__(self, g: float = 9.81) -> None:
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g, dtype=DT))

    def forward(self, t, state):
        x, v = state
        return v, -self.g * torch.ones_like(v)

    @staticmethod
    def event(t, state):
        return state[0]


def _fall_time(x0, v0, g):
    return (v0 + torch.sqrt(v0**2 + 2 * g * x0)) / g


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_bouncing_ball_hits_the_ground(gradient):
    """Event time and the velocity at impact, and their gradients w.r.t. x0, v0 and g, against
    the closed form."""
    ball = Ball()
    x0 = torch.tensor(2.0, dtype=DT, requires_grad=True)
    v0 = torch.tensor(1.0, dtype=DT, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=DT)
    event_t, (xs, vs) = torchmali.odeint_event(
        ball, (x0, v0), t0, event_fn=Ball.event, gradient=gradient, **_setup(gradient)
    )
    tau = _fall_time(x0, v0, ball.g)
    assert xs.shape == vs.shape == (2,)
    assert abs(float(event_t - tau)) < 1e-9
    assert abs(float(xs[-1])) < 1e-9 and abs(float(vs[-1] + torch.sqrt(v0**2 + 19.62 * x0))) < 1e-8
    ours = torch.autograd.grad(event_t + 0.3 * vs[-1], (x0, v0, ball.g))
    exact = torch.autograd.grad(tau + 0.3 * (v0 - ball.g * tau), (x0, v0, ball.g))
    for a, b in zip(ours, exact, strict=True):
        assert abs(float(a - b)) < 1e-7


def test_bouncing_ball_chained_bounces():
    """Three bounces by chaining odeint_event (restitution e), gradients of the third impact
    time through all of them (t0 of each flight is the previous event time)."""
    ball = Ball()
    e = torch.tensor(0.8, dtype=DT, requires_grad=True)
    x0 = torch.tensor(1.5, dtype=DT, requires_grad=True)
    v0 = torch.tensor(0.5, dtype=DT, requires_grad=True)

    def third_impact(x0, v0, e):
        t, state = torch.tensor(0.0, dtype=DT), (x0, v0)
        for _ in range(3):
            t, (xs, vs) = torchmali.odeint_event(
                ball, state, t, event_fn=Ball.event, rtol=1e-10, atol=1e-12
            )
            # lift the ball by 1e-9 so that the next flight does not start on the event
            state = (xs[-1] + 1e-9, -e * vs[-1])
        return t

    t3 = third_impact(x0, v0, e)
    s = torch.sqrt(v0**2 + 2 * ball.g * x0)
    exact = (v0 + s) / ball.g + 2 * e * s / ball.g + 2 * e**2 * s / ball.g
    assert abs(float(t3 - exact)) < 1e-8 + 1e-9
    ours = torch.autograd.grad(t3, (x0, v0, e, ball.g))
    analytic = torch.autograd.grad(exact, (x0, v0, e, ball.g))
    for a, b in zip(ours, analytic, strict=True):
        assert abs(float(a - b)) < 1e-6
    # central finite differences of the whole pipeline
    with torch.no_grad():
        for k, p in enumerate((x0, v0, e)):
            h = 1e-5
            args = [x0.detach(), v0.detach(), e.detach()]
            up = [a + h if i == k else a for i, a in enumerate(args)]
            down = [a - h if i == k else a for i, a in enumerate(args)]
            fd = (third_impact(*up) - third_impact(*down)) / (2 * h)
            assert abs(float(fd - ours[k])) < 1e-5, p


class Growth(torch.nn.Module):
    """``y' = a y`` until ``y`` reaches ``c``: ``τ = ln(c / y0) / a``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=DT))

    def forward(self, t, y):
        return self.a * y


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("reverse", [False, True])
def test_threshold_of_a_linear_ode(gradient, reverse):
    """Gradients of the event time against the closed form and central finite differences; the
    state at the event is the threshold, so its gradient w.r.t. y0 vanishes (implicit function
    theorem)."""
    a, c = (0.7, 0.5) if reverse else (0.7, 3.0)
    kw = _setup(gradient)
    if gradient == "mali":  # second order: a fixed small step
        kw = {"method": "alf", "options": {"step_size": 1e-3}, "atol": 1e-12}

    def solve(y0, f, t0):
        return torchmali.odeint_event(
            f,
            y0,
            t0,
            event_fn=lambda t, y: y[0] - c,
            reverse_time=reverse,
            gradient=gradient,
            **kw,
        )

    f = Growth(a)
    y0 = torch.tensor([1.2, 0.3], dtype=DT, requires_grad=True)
    t0 = torch.tensor(0.4, dtype=DT, requires_grad=True)
    event_t, ys = solve(y0, f, t0)
    tau = t0 + torch.log(c / y0[0]) / f.a
    tol = 1e-6 if gradient == "mali" else 1e-9
    assert abs(float(event_t - tau)) < 10 * tol
    assert (float(event_t) < 0.4) == reverse
    g = torch.autograd.grad(event_t, (y0, t0, f.a), retain_graph=True)
    g_exact = torch.autograd.grad(tau, (y0, t0, f.a), allow_unused=True)
    assert abs(float(g[0][0] - g_exact[0][0])) < 100 * tol and float(g[0][1]) == 0.0
    assert abs(float(g[1]) - 1.0) < 100 * tol and abs(float(g[2] - g_exact[2])) < 100 * tol
    (g_state,) = torch.autograd.grad(ys[-1][0], y0, retain_graph=True)
    assert abs(float(g_state[0])) < 100 * tol
    # central finite differences w.r.t. the rate a and y0[1]'s effect on y[1](event)
    (g_y1,) = torch.autograd.grad(ys[-1][1], f.a)
    with torch.no_grad():
        h = 1e-6
        up = solve(y0.detach(), Growth(a + h), t0.detach())[1][-1][1]
        down = solve(y0.detach(), Growth(a - h), t0.detach())[1][-1][1]
    assert abs(float((up - down) / (2 * h) - g_y1)) < (1e-4 if gradient == "mali" else 1e-6)


def test_multivariate_event_takes_the_first_crossing():
    """Every element of event_fn's output is an event; elements starting negative are flipped
    (torchdiffeq's combine_event_functions)."""
    y0 = torch.tensor([1.0], dtype=DT)

    def event(t, y):
        return torch.stack([y[0] - 3.0, 2.0 - y[0]])  # y reaches 2 first

    event_t, ys = torchmali.odeint(
        lambda t, y: y, y0, torch.tensor([0.0, 1.0], dtype=DT), event_fn=event
    )
    assert abs(float(event_t) - math.log(2.0)) < 1e-6
    assert ys.shape == (2, 1) and abs(float(ys[-1, 0]) - 2.0) < 1e-6


def test_events_match_torchdiffeq():
    tde = pytest.importorskip("torchdiffeq")
    y0 = (torch.tensor(2.0, dtype=DT), torch.tensor(1.0, dtype=DT))
    for kw in (
        {"rtol": 1e-10, "atol": 1e-12},
        {"method": "euler", "options": {"step_size": 0.05}, "atol": 1e-10},
        {"method": "midpoint", "options": {"step_size": 0.05, "interp": "cubic"}, "atol": 1e-10},
    ):
        for t in (torch.tensor([0.0, 1.0], dtype=DT), torch.tensor([0.0, -1.0], dtype=DT)):
            ball = Ball().requires_grad_(False)
            ours = torchmali.odeint(ball, y0, t, event_fn=Ball.event, **kw)
            theirs = tde.odeint(ball, y0, t, event_fn=Ball.event, **kw)
            assert ours[0].dtype == theirs[0].dtype and ours[0].shape == theirs[0].shape
            assert abs(float(ours[0] - theirs[0])) < 1e-9
            for a, b in zip(ours[1], theirs[1], strict=True):
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-8, rtol=0)


class TimeGrowth(Growth):
    """``Growth`` modulated by the last bits of ``t`` (by 1e-9, below the tolerance): an
    adaptive solve evaluates a step's end stages one ulp before its end, a fixed grid on it, and
    this field tells the two apart in the solution."""

    def forward(self, t, y):
        return super().forward(t, y) * (1.0 + 1e-9 * torch.frac(t * 2.0**45))


@pytest.mark.parametrize("field", [Growth, TimeGrowth])
def test_event_solution_is_the_replayed_solve(field):
    """The differentiable solution at the event equals the located one bit for bit, for every
    gradient method (the chosen method replays exactly the steps that located the event, as the
    adaptive solve took them)."""
    results = {}
    for gradient in ("direct", "checkpoint", "binomial", "adjoint", "symplectic"):
        f = field(0.9)
        y0 = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
        event_t, ys = torchmali.odeint(
            f, y0, [0.0, 1.0], event_fn=lambda t, y: y[1] - 5.0, gradient=gradient
        )
        results[gradient] = (event_t, ys.detach())
    with torch.no_grad():
        f = field(0.9)
        located = torchmali.odeint(
            f, torch.tensor([1.0, 2.0], dtype=DT), [0.0, 1.0], event_fn=lambda t, y: y[1] - 5.0
        )
    for event_t, ys in results.values():
        assert torch.equal(event_t, located[0]) and torch.equal(ys, located[1])


def test_event_errors():
    f = Growth(1.0)
    y0 = torch.ones(1, dtype=DT)
    with pytest.raises(ValueError, match=r"len\(t\) == 2"):
        torchmali.odeint(f, y0, [0.0, 1.0, 2.0], event_fn=lambda t, y: y[0] - 2)
    with pytest.raises(ValueError, match="step_size"):
        torchmali.odeint(f, y0, [0.0, 1.0], method="rk4", event_fn=lambda t, y: y[0] - 2)
    with pytest.raises(torchmali.SolverError, match="no event within max_num_steps=20"):
        torchmali.odeint(
            f,
            y0,
            [0.0, 1.0],
            method="euler",
            options={"step_size": 0.1, "max_num_steps": 20},
            event_fn=lambda t, y: y[0] + 2,
        )


def test_odeint_event_through_odeint_adjoint():
    """odeint_adjoint(..., event_fn=) and odeint_event(odeint_interface=odeint_adjoint)."""
    f = Growth(0.7)
    y0 = torch.tensor([1.2, 0.3], dtype=DT, requires_grad=True)
    event_t, ys = torchmali.odeint_adjoint(
        f, y0, [0.0, 1.0], event_fn=lambda t, y: y[0] - 3.0, rtol=1e-10, atol=1e-12
    )
    assert abs(float(event_t) - math.log(3.0 / 1.2) / 0.7) < 1e-9 and not event_t.requires_grad
    event_t, ys = torchmali.odeint_event(
        f,
        y0,
        torch.tensor(0.0, dtype=DT),
        event_fn=lambda t, y: y[0] - 3.0,
        odeint_interface=torchmali.odeint_adjoint,
        rtol=1e-10,
        atol=1e-12,
    )
    g_y0, g_a = torch.autograd.grad(event_t, (y0, f.a))
    assert abs(float(g_y0[0]) + 1 / (0.7 * 1.2)) < 1e-7 and float(g_y0[1]) == 0.0
    assert abs(float(g_a) + math.log(3.0 / 1.2) / 0.49) < 1e-6
