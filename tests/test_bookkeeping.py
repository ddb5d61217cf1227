"""Evaluations made only for the time gradient leave module state and the random stream alone.

With ``t.requires_grad`` the solve evaluates ``func`` at ``t0`` and at every output time once
more; in training mode those evaluations updated BatchNorm statistics (issue 11.7). Buffers and
the global random state must end exactly as when ``t`` does not require grad, for every
gradient method, whether ``func`` is a module or a lambda calling one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchmali
from torchmali.gradients import REGISTRY, resolve

METHODS = sorted({cls.name for cls in REGISTRY.values()})


def _solver(gradient: str) -> str:
    method = resolve(gradient)
    for name in ["alf", *sorted(torchmali.SOLVERS)]:
        try:
            method.check(torchmali.SOLVERS[name](), True)
        except ValueError:
            continue
        return name
    raise AssertionError(gradient)


class _Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.2))

    def forward(self, t, y):
        return torch.tanh(self.net(y)) * (1 + 0.1 * t)


def _run(gradient: str, as_module: bool, time_grad: bool):
    torch.manual_seed(0)
    field = _Field().double()
    func = field if as_module else (lambda t, y: field(t, y))
    params = None if as_module else list(field.parameters())
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=time_grad)
    ys = torchmali.odeint(func, y0, t, method=_solver(gradient), options={"step_size": 0.25},
                          gradient=gradient, params=params)  # fmt: skip
    ys.square().sum().backward()
    return [b.clone() for b in field.buffers()], torch.get_rng_state(), t.grad


@pytest.mark.filterwarnings("ignore::torchmali.ReconstructionDriftWarning")
@pytest.mark.parametrize("as_module", [True, False], ids=["module", "lambda"])
@pytest.mark.parametrize("gradient", METHODS)
def test_time_gradient_leaves_buffers_and_rng_alone(gradient, as_module):
    buffers, rng, _ = _run(gradient, as_module, time_grad=False)
    buffers_t, rng_t, t_grad = _run(gradient, as_module, time_grad=True)
    assert t_grad is not None and bool(torch.isfinite(t_grad).all())
    assert len(buffers) == 3
    for a, b in zip(buffers, buffers_t, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(rng, rng_t)


def test_buffers_reassigned_inside_func_are_restored():
    """A module that replaces a buffer (instead of updating it in place) gets the original back."""

    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, t, y):
            self.calls = self.calls + 1
            return -y

    counts = []
    for time_grad in (False, True):
        func = Counter()
        t = torch.tensor([0.0, 1.0], requires_grad=time_grad)
        torchmali.odeint(func, torch.ones(2), t, method="rk4", options={"step_size": 0.5})
        counts.append(int(func.calls))
    assert counts[0] == counts[1] == 8  # two rk4 steps, nothing else
