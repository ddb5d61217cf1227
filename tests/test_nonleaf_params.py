"""Parameters that are not leaves (issue 10): ``params=[p]`` / ``adjoint_params=[p]`` where ``p``
is computed from other tensors (``W = 2 * W0``, interpolation coefficients built from data that
requires grad). Every memory-efficient method must send the gradient into ``p``'s history exactly
once, like direct backpropagation, and never fail with "backward through the graph a second time".
"""

from __future__ import annotations

import pytest
import torch

import torchmali
from torchmali.gradients import REGISTRY, names, resolve

DT = torch.float64
METHODS = names(memory_efficient=True)
T = torch.tensor([0.0, 0.4, 1.0], dtype=DT)


def _leaves(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W0 = (0.5 * torch.randn(3, 3, generator=g, dtype=DT)).requires_grad_()
    b = (0.1 * torch.randn(3, generator=g, dtype=DT)).requires_grad_()
    y0 = torch.randn(2, 3, generator=g, dtype=DT).requires_grad_()
    data = torch.randn(5, 3, generator=g, dtype=DT).requires_grad_()
    return W0, b, y0, data


def scaled(W0, b, data):
    """``p = 2 W0`` (non-leaf) used directly, with the leaf ``b``."""
    W = 2 * W0
    return (lambda t, y: torch.tanh(y @ W.T + b)), [W, b]


def built_outside(W0, b, data):
    """``func`` uses ``q = h(p)`` built before the solve; only ``p`` (non-leaf) is a param."""
    p = W0.tanh()
    q = p * p + 0.1
    return (lambda t, y: torch.tanh(y @ q.T + b)), [p, b]


def coefficients(W0, b, data):
    """Interpolation-like coefficients from data that requires grad, indexed per evaluation."""
    coeffs = torch.cumsum(data, 0) / 5  # non-leaf
    return (lambda t, y: torch.tanh(y * coeffs[2] + coeffs[4] * torch.sin(t)) @ W0 + b), [
        coeffs,
        W0,
        b,
    ]


def nested(W0, b, data):
    """One parameter computed from another that is also a parameter (``W = sin(W0)``)."""
    W = W0.sin()
    return (lambda t, y: torch.tanh(y @ W.T + y @ W0 + b)), [W, W0, b]


def duplicated(W0, b, data):
    """The same tensor listed twice."""
    W = 2 * W0
    return (lambda t, y: torch.tanh(y @ W.T + b)), [W, b, W, b]


CASES = [scaled, built_outside, coefficients, nested, duplicated]


def _solve_kwargs(gradient: str) -> dict:
    if REGISTRY[gradient].exact:
        method = "alf" if resolve(gradient).accepts(torchmali.SOLVERS["alf"]) else "rk4"
        return {"method": method, "options": {"step_size": 0.1}}
    return {"method": "dopri5", "rtol": 1e-12, "atol": 1e-12}


def _grads(case, gradient: str, seed: int = 0):
    W0, b, y0, data = _leaves(seed)
    func, params = case(W0, b, data)
    kwargs = _solve_kwargs(gradient)
    ys = torchmali.odeint(func, y0, T, gradient=gradient, params=params, **kwargs)
    loss = (ys**2).sum() + ys[-1].sum()
    return torch.autograd.grad(loss, (y0, W0, b, data), allow_unused=True)


def _rel(got, ref) -> float:
    worst = 0.0
    for a, r in zip(got, ref, strict=True):
        if r is None:
            assert a is None or float(a.abs().max()) == 0.0
            continue
        worst = max(worst, float((a - r).norm() / r.norm()))
    return worst


def _reference(case, gradient: str, seed: int = 0):
    W0, b, y0, data = _leaves(seed)
    func, _ = case(W0, b, data)
    ys = torchmali.odeint(func, y0, T, gradient="direct", **_solve_kwargs(gradient))
    loss = (ys**2).sum() + ys[-1].sum()
    return torch.autograd.grad(loss, (y0, W0, b, data), allow_unused=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("gradient", METHODS)
def test_non_leaf_params_match_direct(gradient, case):
    bound = 1e-12 if REGISTRY[gradient].exact else 1e-8
    assert _rel(_grads(case, gradient), _reference(case, gradient)) <= bound


@pytest.mark.parametrize("gradient", METHODS)
def test_a_second_fresh_solve_in_the_same_process(gradient):
    """A training loop: each iteration rebuilds p from the leaves and solves again."""
    for seed in (1, 2):
        assert _rel(
            _grads(coefficients, gradient, seed), _reference(coefficients, gradient, seed)
        ) <= (1e-12 if REGISTRY[gradient].exact else 1e-8)


def test_odeint_adjoint_with_non_leaf_adjoint_params():
    W0, b, y0, data = _leaves()
    func, params = coefficients(W0, b, data)
    ys = torchmali.odeint_adjoint(func, y0, T, rtol=1e-12, atol=1e-12, adjoint_params=params)
    got = torch.autograd.grad((ys**2).sum() + ys[-1].sum(), (y0, W0, b, data))
    assert _rel(got, _reference(coefficients, "adjoint")) <= 1e-8
