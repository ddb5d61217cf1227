"""Direct backpropagation: ``gradcheck`` for every solver, tuple states, time gradients, float32.

Problems are tiny (2-3 dimensions, a handful of steps) so that ``gradcheck``'s finite differences
stay fast. Step sizes are constants of the discrete solve, so fixed grids are the clean case;
adaptive solves are checked at tight tolerances where the grid barely moves under perturbation.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import torchmali
from conftest import ALL_SOLVERS, TanhField, make_linear


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(2, generator=g, dtype=dtype).requires_grad_()
    W = (0.7 * torch.randn(2, 2, generator=g, dtype=dtype)).requires_grad_()
    b = (0.3 * torch.randn(2, generator=g, dtype=dtype)).requires_grad_()
    return y0, W, b


def _field(W, b):
    def f(t, y):
        return torch.tanh(y @ W.T + b) + 0.2 * t * y

    return f


@pytest.mark.parametrize("method", ALL_SOLVERS)
def test_gradcheck_fixed_grid(method, f64):
    """Gradients w.r.t. y0 and parameters (passed through a closure), several output times."""
    t = torch.tensor([0.0, 0.3, 0.7], dtype=f64)

    def run(y0, W, b):
        return torchmali.odeint(_field(W, b), y0, t, method=method, options={"step_size": 0.25})

    assert gradcheck(run, _inputs(f64))


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "alf"])
def test_gradcheck_adaptive_tight_tolerance(method, f64):
    t = torch.tensor([0.0, 0.4, 0.8], dtype=f64)
    tol = {"alf": 1e-5, "bosh3": 1e-7}.get(method, 1e-9)

    def run(y0, W, b):
        return torchmali.odeint(_field(W, b), y0, t, rtol=tol, atol=tol, method=method)

    assert gradcheck(run, _inputs(f64, seed=1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["rk4", "alf", "dopri5"])
def test_gradcheck_decreasing_time(method, f64):
    t = torch.tensor([0.5, 0.1, -0.4], dtype=f64)
    options = {"step_size": 0.2} if method != "dopri5" else {}

    def run(y0, W, b):
        return torchmali.odeint(
            _field(W, b), y0, t, rtol=1e-9, atol=1e-9, method=method, options=options
        )

    assert gradcheck(run, _inputs(f64, seed=2), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["heun", "alf", "dopri5"])
def test_gradcheck_tuple_state(method, f64):
    t = torch.tensor([0.0, 0.35, 0.6], dtype=f64)
    options = {"step_size": 0.2} if method != "dopri5" else {}

    def run(x0, p0, W):
        def f(t, state):
            x, p = state
            return torch.tanh(x @ W.T) * p, -0.5 * p * x.sum(-1, keepdim=True)

        xs, ps = torchmali.odeint(
            f, (x0, p0), t, rtol=1e-9, atol=1e-9, method=method, options=options
        )
        return xs, ps

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 2, generator=g, dtype=f64).requires_grad_()
    p0 = torch.rand(1, 1, generator=g, dtype=f64).add(0.5).requires_grad_()
    W = torch.randn(2, 2, generator=g, dtype=f64).requires_grad_()
    assert gradcheck(run, (x0, p0, W), atol=1e-5, rtol=1e-4)


def test_gradient_of_first_output_is_identity(f64):
    y0 = torch.tensor([0.3, -0.2], dtype=f64, requires_grad=True)
    ys = torchmali.odeint(lambda t, y: -y, y0, [0.0, 1.0])
    (g,) = torch.autograd.grad(ys[0].sum(), y0)
    assert torch.equal(g, torch.ones_like(y0))


def test_module_parameters_get_gradients(f64):
    field = TanhField(3, f64)
    y0 = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    ys = torchmali.odeint(field, y0, [0.0, 0.5, 1.0], method="alf", options={"step_size": 0.1})
    ys[-1].square().sum().backward()
    for p in field.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert float(p.grad.abs().max()) > 0


# ---------------------------------------------------------------------------------------------
# Time gradients: dL/dt_k = <dL/dy(t_k), f(t_k, y(t_k))>, dL/dt0 = -<a(t0) - dL/dy(t0), f(t0, y0)>.


def _linear_time_grads(linear, ts, w):
    """Analytic dL/dt for L = sum_k <w_k, y(t_k)> on y' = A y."""
    A, y0 = linear.A, linear.y0
    t0 = float(ts[0])
    grads = [0.0]
    for k in range(1, len(ts)):
        yk = torch.linalg.matrix_exp(A * (float(ts[k]) - t0)) @ y0
        grads.append(float(w[k] @ (A @ yk)))
        # y(t_k) = expm(A (t_k - t0)) y0, so d y(t_k) / d t0 = -expm(A (t_k - t0)) A y0
        grads[0] -= float(w[k] @ (torch.linalg.matrix_exp(A * (float(ts[k]) - t0)) @ (A @ y0)))
    return torch.tensor(grads, dtype=torch.float64)


@pytest.mark.parametrize(
    ("method", "options", "tol", "accuracy"),
    [
        ("dopri5", {}, 1e-10, 1e-7),
        ("tsit5", {}, 1e-10, 1e-7),
        ("rk4", {"step_size": 0.01}, 1e-10, 1e-7),
        ("alf", {"step_size": 0.01}, 1e-10, 1e-3),
    ],
)
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_time_gradients_linear(method, options, tol, accuracy, direction, linear):
    ts = torch.tensor([0.2, 0.7, 1.1, 1.6], dtype=torch.float64) * direction
    w = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = ts.clone().requires_grad_()
    ys = torchmali.odeint(
        linear.f, linear.y0, t, rtol=tol, atol=tol, method=method, options=options
    )
    (w * ys).sum().backward()
    expected = _linear_time_grads(linear, ts, w)
    assert torch.allclose(t.grad, expected, rtol=0, atol=accuracy), (t.grad, expected)


def test_time_gradients_match_finite_differences(f64):
    """Nonlinear field: autograd dL/dt vs central differences of an accurate dopri5 solve."""
    field = TanhField(3, f64, seed=4).requires_grad_(False)
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=f64)
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=f64)
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.3, 0.7, -1.0]], dtype=f64)

    def loss(times):
        return (w * torchmali.odeint(field, y0, times, rtol=1e-10, atol=1e-10)).sum()

    t = ts.clone().requires_grad_()
    loss(t).backward()
    eps = 1e-5
    fd = []
    for k in range(len(ts)):
        dt = torch.zeros_like(ts)
        dt[k] = eps
        fd.append(float(loss(ts + dt) - loss(ts - dt)) / (2 * eps))
    assert torch.allclose(t.grad, torch.tensor(fd, dtype=f64), atol=1e-6, rtol=0), (t.grad, fd)


def test_time_and_state_gradients_together(linear):
    y0 = linear.y0.clone().requires_grad_()
    t = torch.tensor([0.0, 0.5], dtype=torch.float64, requires_grad=True)
    ys = torchmali.odeint(linear.f, y0, t, rtol=1e-10, atol=1e-10)
    ys[-1].sum().backward()
    expm = torch.linalg.matrix_exp(linear.A * 0.5)
    assert torch.allclose(y0.grad, expm.T @ torch.ones(3, dtype=torch.float64), atol=1e-8)
    assert float(t.grad[1]) == pytest.approx(float((linear.A @ (expm @ linear.y0)).sum()), abs=1e-8)


# ---------------------------------------------------------------------------------------------
# float32.


@pytest.mark.parametrize(
    ("method", "options"), [("dopri5", {}), ("rk4", {"step_size": 0.1}), ("alf", {})]
)
def test_float32_gradients_close_to_float64(method, options):
    grads = {}
    for dtype in (torch.float32, torch.float64):
        lin = make_linear(dtype)
        A = lin.A.clone().requires_grad_()
        y0 = lin.y0.clone().requires_grad_()
        ys = torchmali.odeint(
            lambda t, y, A=A: y @ A.T,
            y0,
            [0.0, 0.5, 1.0],
            rtol=1e-5,
            atol=1e-6,
            method=method,
            options=options,
        )
        ys.square().sum().backward()
        assert bool(torch.isfinite(A.grad).all()) and bool(torch.isfinite(y0.grad).all())
        grads[dtype] = (A.grad.double(), y0.grad.double())
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64], strict=True):
        assert torch.allclose(g32, g64, rtol=1e-4, atol=1e-4)
