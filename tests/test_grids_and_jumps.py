"""Fixed grids (t, step_size, grid_constructor, interpolation), the step-count check, and
jump_t / step_t, with every gradient method."""

from __future__ import annotations

import pytest
import torch

import torchmali
from torchmali import SolverError
from torchmali.gradients import REGISTRY

DT = torch.float64
GRADIENTS = sorted({cls.name for cls in REGISTRY.values()})
EXACT = [g for g in GRADIENTS if g not in ("direct", "adjoint", "mali")]


class Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=DT) / 2)

    def forward(self, t, y):
        return torch.tanh(y @ self.W.T + 0.2 * t)


def _grads(gradient, **kwargs):
    f = Field()
    y0 = torch.tensor([0.3, -0.4, 0.8], dtype=DT, requires_grad=True)
    t = kwargs.pop("t", torch.tensor([0.0, 0.33, 0.71, 1.0], dtype=DT))
    ys = torchmali.odeint(f, y0, t, gradient=gradient, **kwargs)
    g = torch.autograd.grad((ys[1:] ** 3).sum(), (y0, *f.parameters()))
    return ys.detach(), torch.cat([x.reshape(-1) for x in g])


@pytest.mark.parametrize(
    "options", [{}, {"step_size": 0.1}, {"step_size": 0.1, "interp": "cubic"}], ids=str
)
@pytest.mark.parametrize("gradient", EXACT)
def test_interpolated_outputs_exact_with_every_method(gradient, options):
    """Outputs between grid points (linear or cubic) are replayed by every exact gradient
    method: the same values and direct backpropagation's gradients (the symplectic adjoint
    refuses cubic interpolation, whose extra evaluation its stage recursion does not hold)."""
    if gradient == "symplectic" and options.get("interp") == "cubic":
        with pytest.raises(ValueError, match="interp.*cubic.*checkpoint"):
            _grads(gradient, method="rk4", options=options)
        return
    ys_d, g_d = _grads("direct", method="rk4", options=options)
    ys, g = _grads(gradient, method="rk4", options=options)
    assert torch.equal(ys, ys_d)
    assert float((g - g_d).abs().max() / g_d.abs().max()) < 1e-12


def test_cubic_interpolation_is_more_accurate_and_costs_an_evaluation():
    f = Field().requires_grad_(False)
    y0 = torch.tensor([0.3, -0.4, 0.8], dtype=DT)
    t = torch.tensor([0.0, 0.55, 1.0], dtype=DT)
    ref = torchmali.odeint(f, y0, t, rtol=1e-12, atol=1e-12)
    sols = {
        interp: torchmali.solve(
            f, y0, t, method="rk4", options={"step_size": 0.1, "interp": interp}
        )
        for interp in ("linear", "cubic")
    }
    err = {k: float((s.ys[1] - ref[1]).abs().max()) for k, s in sols.items()}
    assert err["cubic"] < 0.05 * err["linear"]
    assert sols["cubic"].stats.nfe_forward == sols["linear"].stats.nfe_forward + 1


@pytest.mark.parametrize("h", [1e-7, 1e-8, 1e-300])
def test_tiny_step_size_raises_before_building_the_grid(h):
    """Issue 11.4: the step count is known up front; 1e-300 would never finish building."""
    with pytest.raises(SolverError, match="more than max_num_steps=10"):
        torchmali.odeint(
            lambda t, y: -y,
            torch.ones(2),
            [0.0, 1.0],
            method="rk4",
            options={"step_size": h, "max_num_steps": 10},
        )


def test_grid_constructor_and_t_grids_count_their_steps():
    with pytest.raises(SolverError, match="max_num_steps=5"):
        torchmali.odeint(
            lambda t, y: -y,
            torch.ones(2),
            [0.0, 1.0],
            method="euler",
            options={
                "grid_constructor": lambda f, y, t: torch.linspace(0, 1, 100),
                "max_num_steps": 5,
            },
        )
    with pytest.raises(SolverError, match="max_num_steps=5"):
        torchmali.odeint(
            lambda t, y: -y,
            torch.ones(2),
            torch.linspace(0, 1, 20),
            method="euler",
            options={"max_num_steps": 5},
        )


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (lambda t: torch.linspace(0, 0.9, 5), "start at t"),
        (lambda t: torch.tensor([0.0, 0.6, 0.5, 1.0]), "strictly monotone"),
        (lambda t: torch.zeros(2, 2), "1-D"),
    ],
)
def test_grid_constructor_checks_its_grid(grid, message):
    with pytest.raises(ValueError, match=message):
        torchmali.odeint(
            lambda t, y: -y,
            torch.ones(2),
            [0.0, 1.0],
            method="euler",
            options={"grid_constructor": lambda f, y, t: grid(t)},
        )


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("alf", {"step_size": 0.1, "interp": "cubic"}, "lands on every output"),
        ("dopri5", {"interp": "cubic"}, "only apply to fixed-grid"),
        ("rk4", {"jump_t": [0.5]}, "only apply to adaptive"),
        ("euler", {"dtype": torch.float32}, "only apply to adaptive"),
        ("dopri5", {"dtype": "float32"}, "dtype of time"),
        ("dopri5", {"step_t": "abc"}, "sequence of times"),
    ],
)
def test_options_that_do_nothing_are_refused(method, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        torchmali.odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0], method=method, options=options)


class Jump:
    """``f`` jumps at t = 0.5 (torchdiffeq's test problem)."""

    def __init__(self) -> None:
        self.nfe = 0

    def __call__(self, t, x):
        self.nfe += 1
        return -0.5 * x if t < 0.5 else x**2


def _stages_at_the_end_look_back(method: str) -> bool:
    """Whether the solver evaluates its stages at the step's end with ``perturb=-1`` (the left
    side of a jump there), as torchdiffeq does (OWNERS.md interface 3, the solvers helper)."""
    hints = []

    def f(t, y, perturb=0):
        hints.append(perturb)
        return -y

    solver = torchmali.SOLVERS[method]()
    solver.step(f, 0.0, 0.1, torch.ones(1, dtype=DT), solver.init(f, 0.0, torch.ones(1, dtype=DT)))
    return -1 in hints


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun"])
def test_jump_t_lands_and_is_accurate(method):
    """Across a jump of f, jump_t gives the solution of the two pieces solved separately."""
    x0 = torch.tensor([1.0, 2.0], dtype=DT)
    jump = Jump()
    b = torchmali.odeint(
        jump,
        x0,
        [0.0, 1.0],
        rtol=1e-8,
        atol=1e-8,
        method=method,
        options={"jump_t": torch.tensor([0.5])},
    )
    left = torch.exp(torch.tensor(-0.25, dtype=DT)) * x0  # x' = -x/2 up to 0.5
    right = left / (1 - 0.5 * left)  # x' = x^2 from 0.5 to 1
    assert torch.allclose(b[-1], right, rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun"])
def test_jump_t_saves_evaluations(method):
    if not _stages_at_the_end_look_back(method):
        pytest.xfail(
            f"{method} evaluates its last stage on the right side of a jump at the step's end "
            "(needs perturb=-1 on stages at t1, the solvers helper's part of interface 3)"
        )
    x0 = torch.tensor([1.0, 2.0], dtype=DT)
    t = torch.tensor([0.0, 1.0], dtype=DT)
    plain, jump = Jump(), Jump()
    torchmali.odeint(plain, x0, t, rtol=1e-6, atol=1e-6, method=method)
    torchmali.odeint(
        jump, x0, t, rtol=1e-6, atol=1e-6, method=method, options={"jump_t": torch.tensor([0.5])}
    )
    assert jump.nfe < plain.nfe


def test_jump_t_restarts_with_the_derivative_after_the_jump():
    """After landing on a jump, the derivative is evaluated once more just after it
    (``perturb=+1``: the user's time is nudged by one ulp), in both time directions."""
    for direction in (1.0, -1.0):
        seen = []

        def f(t, y, seen=seen):
            seen.append(float(t))
            return -y

        jump = 0.5 * direction
        torchmali.odeint(
            f,
            torch.ones(2, dtype=DT),
            [0.0, direction],
            method="dopri5",
            options={"jump_t": [jump]},
        )
        after = torch.nextafter(torch.tensor(jump, dtype=DT), torch.tensor(2 * jump, dtype=DT))
        assert float(after) in seen


@pytest.mark.parametrize("gradient", EXACT)
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_jump_t_gradients_are_exact(gradient, direction):
    """The restart after a jump is part of the step, so checkpointing replays it (the
    symplectic adjoint, whose stage recursion does not hold the restart, refuses jump_t)."""
    t = torch.tensor([0.0, 0.2, 1.0], dtype=DT) * direction
    opts = {"jump_t": torch.tensor([0.5 * direction, 0.8 * direction]), "step_t": [0.1 * direction]}
    if gradient == "symplectic":
        with pytest.raises(ValueError, match="jump_t.*checkpoint"):
            _grads(gradient, t=t, rtol=1e-7, atol=1e-7, options=opts)
        return
    ys_d, g_d = _grads("direct", t=t, rtol=1e-7, atol=1e-7, options=opts)
    ys, g = _grads(gradient, t=t, rtol=1e-7, atol=1e-7, options=opts)
    assert torch.equal(ys, ys_d)
    assert float((g - g_d).abs().max() / g_d.abs().max()) < 1e-12


def test_jump_t_with_the_adjoint_and_refused_with_mali():
    ys, g = _grads("adjoint", rtol=1e-9, atol=1e-9, options={"jump_t": [0.5]})
    _, g_d = _grads("direct", rtol=1e-9, atol=1e-9, options={"jump_t": [0.5]})
    assert float((g - g_d).abs().max() / g_d.abs().max()) < 1e-6
    with pytest.raises(ValueError, match="jump_t.*checkpoint"):
        _grads("mali", method="alf", options={"jump_t": [0.5]})
