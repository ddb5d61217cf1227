"""States of every shape torchdiffeq accepts, with every gradient method.

0-dim tensors, tuples of 0-dim tensors, and complex states (integrated through real views:
solvers see a real tensor, ``func`` sees complex ones), checked against analytic solutions,
against ``gradient="direct"`` and against torchdiffeq.
"""

from __future__ import annotations

import cmath

import pytest
import torch

import torchmali
from torchmali.gradients import REGISTRY

DT = torch.float64
GRADIENTS = sorted({cls.name for cls in REGISTRY.values()})


def _setup(gradient: str) -> dict:
    """The solver each gradient method is exercised with (MALI needs ALF)."""
    if gradient == "mali":
        return {"method": "alf", "options": {"step_size": 0.01}}
    return {"method": "dopri5", "rtol": 1e-10, "atol": 1e-10}


class Oscillator(torch.nn.Module):
    """``y' = i ω y``: ``y(t) = y0 exp(i ω t)``."""

    def __init__(self, omega: complex) -> None:
        super().__init__()
        dtype = torch.complex128 if isinstance(omega, complex) else DT
        self.omega = torch.nn.Parameter(torch.tensor(omega, dtype=dtype))

    def forward(self, t, y):
        assert y.is_complex() and not t.is_complex() and t.dtype == DT
        return 1j * self.omega * y


C = torch.tensor([0.7 - 0.2j, 0.1 + 1.0j], dtype=torch.complex128)
T = 1.3


def _loss(y):
    return (C.conj() * y).real.sum()


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_complex_state_matches_the_analytic_solution(gradient):
    """``y' = i ω y`` with ``ω`` a real parameter: values and gradients w.r.t. ``y0`` and ``ω``."""
    f = Oscillator(2.0)
    y0 = torch.tensor([1 + 0.5j, -0.3j], dtype=torch.complex128, requires_grad=True)
    t = torch.tensor([0.0, 0.4, T], dtype=DT)
    ys = torchmali.odeint(f, y0, t, gradient=gradient, **_setup(gradient))
    assert ys.dtype == torch.complex128 and ys.shape == (3, 2)
    phase = torch.exp(1j * 2.0 * t)[:, None]
    tol = 2e-4 if gradient == "mali" else 1e-8
    assert torch.allclose(ys, y0.detach() * phase, atol=tol, rtol=0)
    g_w, g_y0 = torch.autograd.grad(_loss(ys[-1]), (f.omega, y0))
    e = cmath.exp(2j * T)
    exact_w = sum(
        (c.conjugate() * y * 1j * T * e).real for c, y in zip(C.tolist(), y0.tolist(), strict=True)
    )
    # L = Re(conj(c) y0 e): PyTorch gives d L / d y0 as conj(conj(c) e) = c exp(-i w T).
    exact_y0 = (C * cmath.exp(-2j * T)).detach()
    assert abs(float(g_w) - exact_w) < 10 * tol
    assert torch.allclose(g_y0, exact_y0, atol=10 * tol, rtol=0)


@pytest.mark.parametrize("gradient", [g for g in GRADIENTS if g != "direct"])
def test_complex_gradients_equal_direct(gradient):
    """Exact gradient methods give direct backpropagation's gradients to round-off (the adjoint
    to its tolerance), complex parameter included."""
    grads = []
    for g in ("direct", gradient):
        f = Oscillator(2.0 + 0.1j)  # a complex parameter: growth/decay and rotation
        y0 = torch.tensor([1 + 0.5j, -0.3j], dtype=torch.complex128, requires_grad=True)
        ys = torchmali.odeint(f, y0, [0.0, 0.5, T], gradient=g, **_setup(gradient))
        out = torch.autograd.grad(_loss(ys[1:]), (f.omega, y0))
        grads.append(torch.cat([torch.view_as_real(x).reshape(-1) for x in out]))
    gap = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
    assert gap < (1e-7 if gradient == "adjoint" else 1e-10)


def test_complex_state_against_torchdiffeq():
    tde = pytest.importorskip("torchdiffeq")
    f = Oscillator(3.0)
    y0 = torch.tensor([[1 + 0.5j, -0.3j], [0.2, 1j]], dtype=torch.complex128)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=DT)
    with torch.no_grad():
        ours = torchmali.odeint(f, y0, t)
        theirs = tde.odeint(f, y0, t)
        fixed = torchmali.odeint(f, y0, t, method="midpoint", options={"step_size": 0.1})
        fixed_theirs = tde.odeint(f, y0, t, method="midpoint", options={"step_size": 0.1})
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert torch.allclose(fixed, fixed_theirs, atol=1e-14, rtol=0)


def test_complex_error_control_uses_the_modulus():
    """The scaled error of a complex state is measured on the complex tensor (modulus), as in
    torchdiffeq: a user norm sees complex tensors of the state's shape."""
    seen = []

    def norm(x):
        seen.append((x.dtype, tuple(x.shape)))
        return x.abs().pow(2).mean().sqrt()

    f = Oscillator(3.0)
    y0 = torch.tensor([1 + 0.5j, -0.3j], dtype=torch.complex128)
    with torch.no_grad():
        default = torchmali.solve(f, y0, [0.0, 2.0], rtol=1e-6, atol=1e-6)
        custom = torchmali.solve(f, y0, [0.0, 2.0], rtol=1e-6, atol=1e-6, options={"norm": norm})
    assert set(seen) == {(torch.complex128, (2,))}
    assert torch.allclose(default.ts, custom.ts, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_tuple_of_scalars(gradient):
    """A tuple of 0-dim tensors (used to crash in reshape): values and gradients of
    ``x' = v, v' = -x``."""
    x0 = torch.tensor(1.0, dtype=DT, requires_grad=True)
    v0 = torch.tensor(0.5, dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    xs, vs = torchmali.odeint(
        lambda t, y: (y[1], -y[0]), (x0, v0), t, gradient=gradient, params=(), **_setup(gradient)
    )
    assert xs.shape == vs.shape == (3,)
    tol = 1e-4 if gradient == "mali" else 1e-8
    exact = torch.cos(t) + 0.5 * torch.sin(t)
    assert torch.allclose(xs, exact, atol=tol, rtol=0)
    gx, gv = torch.autograd.grad(xs[-1], (x0, v0))
    assert abs(float(gx) - float(torch.cos(t[-1]))) < 10 * tol
    assert abs(float(gv) - float(torch.sin(t[-1]))) < 10 * tol


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_scalar_state(gradient):
    y0 = torch.tensor(2.0, dtype=DT, requires_grad=True)
    ys = torchmali.odeint(
        lambda t, y: -0.5 * y, y0, [0.0, 1.0], gradient=gradient, params=(), **_setup(gradient)
    )
    assert ys.shape == (2,)
    (g,) = torch.autograd.grad(ys[-1], y0)
    tol = 1e-4 if gradient == "mali" else 1e-8
    assert abs(float(g) - 0.6065306597126334) < tol
